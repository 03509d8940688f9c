//! The write side of the registry: inserts (local, forwarded to the leader, or handed to a
//! node with a replica), multi-vshard writes with their durable intent, and group-0
//! proposals from any node.

use super::*;

impl Registry {
    pub(super) async fn finish_intents(&self, pending: Vec<(u64, Vec<Part>)>) {
        for (index, parts) in pending {
            tracing::info!(
                intent = index,
                parts = parts.len(),
                "finishing a write interrupted by a crash"
            );
            let mut delay = Duration::from_millis(200);
            loop {
                let results = self.propose_parts(parts.clone()).await;
                match results.into_iter().find(|r| r.is_err()) {
                    None => {
                        if let Err(e) = self.intents.done(index) {
                            tracing::warn!(intent = index, error = %e, "could not record a finished write");
                        }
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(intent = index, error = %e, "interrupted write not finished yet; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                    Some(Ok(_)) => unreachable!(),
                }
            }
        }
    }

    /// Proposes an insert forwarded by another node; only answers if this node leads.
    pub(super) async fn handle_forwarded_insert(
        &self,
        msg: &RaftMessage,
    ) -> Result<bytes::Bytes, Error> {
        #[derive(serde::Deserialize)]
        struct H {
            table_id: u64,
            request_id: Option<u64>,
        }
        let h: H = serde_json::from_slice(&msg.header)
            .map_err(|e| Error::Rejected(format!("bad forwarded insert: {e}")))?;
        let vshard = msg
            .group
            .checked_sub(1)
            .ok_or_else(|| Error::Rejected("inserts go to vshard groups".into()))?;
        let cmd = Command::Insert {
            table_id: h.table_id,
            request_id: h.request_id,
            ipc: msg.entries.first().cloned().unwrap_or_default(),
        };
        let r = self.insert(vshard, cmd).await?;
        Ok(serde_json::to_vec(&r).unwrap_or_default().into())
    }

    /// Proposes a group-0 command; a follower forwards it to the leader (once, or again
    /// after the leader changed) and then waits until its own copy applied it, so the caller
    /// reads its own write.
    ///
    /// Bounded by `META_PROPOSE_DEADLINE`: a leader cut off from its quorum would wait for
    /// the commit forever. When it runs out the command may still commit later (the answer
    /// is "unavailable", and a retry is safe for every command the callers send).
    pub async fn propose_meta(&self, cmd: Command) -> Result<Response, Error> {
        const ATTEMPTS: usize = 5;
        let deadline = tokio::time::Instant::now() + META_PROPOSE_DEADLINE;
        let timed_out = || Error::Unavailable {
            group: 0,
            reason: format!(
                "group 0 did not commit within {} s (no quorum reachable?)",
                META_PROPOSE_DEADLINE.as_secs()
            ),
        };
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(last.unwrap_or_else(timed_out));
            }
            let written = tokio::time::timeout(left, self.meta.client_write(cmd.clone()))
                .await
                .map_err(|_| self.proposal_failed(timed_out()))?;
            let hint = match self.written(0, written) {
                Err(Error::NotLeader { hint, .. }) => hint,
                other => return other,
            };
            let Some(leader) = hint.filter(|l| *l != self.cfg.node_id) else {
                // No leader known yet (an election is under way): wait for one.
                last = Some(Error::Unavailable {
                    group: 0,
                    reason: "group 0 has no leader".into(),
                });
                let _ = self
                    .meta
                    .wait(Some(Duration::from_millis(200 << attempt.min(4))))
                    .metrics(|m| m.current_leader.is_some(), "group 0 leader")
                    .await;
                continue;
            };
            let body = serde_json::to_vec(&cmd).map_err(|e| Error::Internal(e.to_string()))?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let forwarded =
                tokio::time::timeout(left, self.transport.forward_meta(leader, body.into()))
                    .await
                    .map_err(|_| timed_out())?;
            match forwarded {
                Ok(reply) => {
                    let fw: ForwardedWrite = serde_json::from_slice(&reply)
                        .map_err(|e| Error::Internal(format!("bad forwarded reply: {e}")))?;
                    let _ = self
                        .meta
                        .wait(Some(Duration::from_secs(5)))
                        .applied_index_at_least(Some(fw.index), "forwarded write applied")
                        .await;
                    return Ok(fw.response);
                }
                Err(e) => {
                    last = Some(Error::Unavailable {
                        group: 0,
                        reason: format!("forwarding to leader {leader}: {e}"),
                    });
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(4))).await;
                }
            }
        }
        Err(last.unwrap_or(Error::Unavailable {
            group: 0,
            reason: "no leader".into(),
        }))
    }

    /// Applies a group-0 command forwarded by a follower; only the leader answers.
    pub async fn handle_forwarded_meta(&self, body: &[u8]) -> Result<bytes::Bytes, Error> {
        let cmd: Command = serde_json::from_slice(body)
            .map_err(|e| Error::Rejected(format!("bad forwarded command: {e}")))?;
        if matches!(cmd, Command::Insert { .. }) {
            return Err(Error::Rejected("inserts are not group-0 commands".into()));
        }
        if matches!(cmd, Command::Ddl { .. }) {
            self.check_disk()?;
        }
        // Inside the forwarder's own deadline (the transport's forward timeout).
        let r = tokio::time::timeout(META_PROPOSE_DEADLINE, self.meta.client_write(cmd))
            .await
            .map_err(|_| {
                self.proposal_failed(Error::Unavailable {
                    group: 0,
                    reason: "group 0 did not commit in time (no quorum reachable?)".into(),
                })
            })?;
        let (response, index) = match r {
            Ok(resp) => (resp.data, resp.log_id.index),
            Err(e) => return self.written(0, Err(e)).map(|_| bytes::Bytes::new()),
        };
        let fw = ForwardedWrite { response, index };
        Ok(serde_json::to_vec(&fw).unwrap_or_default().into())
    }

    /// Proposes a DDL batch to group 0 (through the leader) and waits for it to apply here.
    pub async fn propose_ddl(&self, ops: Vec<DdlOp>) -> Result<Response, Error> {
        self.check_disk()?;
        self.propose_meta(Command::Ddl { ops }).await
    }

    /// Proposes an insert to a vshard's group and waits until it is committed and applied
    /// by a quorum of its replicas. A follower forwards it to the group's leader (again if
    /// the leader moved meanwhile).
    pub async fn insert(&self, vshard: u32, cmd: Command) -> Result<Response, Error> {
        let group = group_of_vshard(vshard);
        let mut last = None;
        let deadline = tokio::time::Instant::now() + FORWARD_DEADLINE;
        let mut attempt = 0u32;
        while tokio::time::Instant::now() < deadline {
            attempt += 1;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let hint = match self.insert_local(vshard, cmd.clone(), left).await {
                Err(Error::NotLeader { hint, .. }) => hint,
                // No replica here: hand it to a node that has one (it forwards on to the
                // leader).
                Err(Error::NotHosted { .. }) => {
                    let hosts: Vec<u64> = self
                        .catalog
                        .read()
                        .replicas(vshard)
                        .into_iter()
                        .filter(|n| *n != self.cfg.node_id)
                        .collect();
                    if hosts.is_empty() {
                        return Err(self.not_hosted(vshard));
                    }
                    // Alive replicas first, a different one on each attempt.
                    let (mut alive, down): (Vec<u64>, Vec<u64>) =
                        hosts.into_iter().partition(|n| self.is_alive(*n));
                    alive.extend(down);
                    Some(alive[(vshard as usize + attempt as usize) % alive.len()])
                }
                other => return other,
            };
            let Some(leader) = hint.filter(|l| *l != self.cfg.node_id) else {
                last = Some(Error::Unavailable {
                    group,
                    reason: "no leader (an election is under way)".into(),
                });
                if let Some(s) = self.shard(vshard) {
                    let _ = s
                        .raft
                        .wait(Some(backoff(attempt) * 4))
                        .metrics(|m| m.current_leader.is_some(), "vshard leader")
                        .await;
                } else {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                continue;
            };
            let Command::Insert {
                table_id,
                request_id,
                ipc,
            } = &cmd
            else {
                return Err(Error::Rejected("only inserts go to vshard groups".into()));
            };
            let header = serde_json::json!({"table_id": table_id, "request_id": request_id});
            let msg = RaftMessage {
                group,
                kind: RaftRpc::ClientInsert,
                header: serde_json::to_vec(&header).unwrap_or_default().into(),
                entries: vec![ipc.clone()],
            };
            match self
                .transport
                .send_raft(
                    leader,
                    "",
                    msg,
                    deadline
                        .saturating_duration_since(tokio::time::Instant::now())
                        .max(Duration::from_millis(100)),
                )
                .await
            {
                Ok(body) => {
                    return serde_json::from_slice(&body)
                        .map_err(|e| Error::Internal(format!("bad forwarded reply: {e}")))
                }
                Err(e) => {
                    last = Some(Error::Unavailable {
                        group,
                        reason: format!("forwarding to leader {leader}: {e}"),
                    });
                    if let Some(s) = self.shard(vshard) {
                        self.leader_unreachable(&s, leader).await;
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        Err(last.unwrap_or(Error::Unavailable {
            group,
            reason: "no leader".into(),
        }))
    }

    /// Proposes an insert to this node's replica of the group (fails with `NotLeader`
    /// unless it leads).
    /// `within` bounds the wait for the commit: a leader cut off from its quorum would wait
    /// forever (the entry may still commit later; the request's id makes a retry safe).
    pub(super) async fn insert_local(
        &self,
        vshard: u32,
        cmd: Command,
        within: Duration,
    ) -> Result<Response, Error> {
        if vshard >= self.cfg.vshards {
            return Err(Error::Internal(format!("vshard {vshard} out of range")));
        }
        let s = self.shard(vshard).ok_or_else(|| self.not_hosted(vshard))?;
        s.touch();
        self.check_disk()?;
        let group = group_of_vshard(vshard);
        let written = tokio::time::timeout(within, s.raft.client_write(cmd))
            .await
            .map_err(|_| {
                self.proposal_failed(Error::Unavailable {
                    group,
                    reason: format!(
                        "not committed within {} ms (no quorum reachable?)",
                        within.as_millis()
                    ),
                })
            })?;
        let r = self.written(group, written);
        if matches!(r, Err(Error::NotLeader { hint: None, .. }))
            && s.raft.metrics().borrow_watched().current_leader == Some(self.cfg.node_id)
        {
            // The lease lapsed while the group was quiet: a heartbeat round renews it
            // before the caller's retry.
            let _ = s.raft.trigger().heartbeat().await;
        }
        r
    }

    /// Proposes the parts of one write (one insert per vshard) and waits for all of them.
    /// With more than one part, a durable intent first makes the write all-or-nothing across
    /// a crash of this node (see [`crate::intents`]).
    pub async fn insert_many(&self, parts: Vec<Part>) -> Vec<Result<Response, Error>> {
        if parts.len() <= 1 {
            return self.propose_parts(parts).await;
        }
        let unavailable = |parts: &[Part], e: Error| {
            parts
                .iter()
                .map(|_| {
                    Err(Error::Unavailable {
                        group: 0,
                        reason: e.to_string(),
                    })
                })
                .collect()
        };
        let (intent, durable) = match self.intents.begin(&parts).await {
            Ok(begun) => begun,
            Err(e) => return unavailable(&parts, e),
        };
        // A part only this node votes on commits once it is durable in this node's WAL,
        // queued after the intent, so the intent is durable by then too. A part that other
        // nodes can commit must wait for the intent's fsync first.
        if !self.votes_alone(parts.iter().map(|(v, _)| *v)) {
            if let Err(e) = durable.wait().await {
                return unavailable(&parts, e);
            }
        }
        let results = self.propose_parts(parts).await;
        // A part that failed for a retryable reason stays intended: the next start finishes it.
        let settled = results.iter().all(Result::is_ok);
        if settled {
            if let Err(e) = self.intents.done(intent) {
                tracing::warn!(intent, error = %e, "could not record a finished write; it will be re-proposed (harmlessly) at start-up");
            }
        }
        results
    }

    /// Whether this node is the only voter of every one of `vshards`' groups, so that an
    /// entry proposed now commits only once this node's WAL is durable past it.
    ///
    /// A voter added later changes nothing: that membership change is appended after the
    /// intent and must commit under a configuration that needs this node's WAL, before any
    /// configuration that does not can take effect. The Raft metrics alone could be stale
    /// (a change appended before the intent but not yet reported), so the applied node
    /// registry must also hold no other node: a vshard voter is only ever added for a
    /// registered node, by the group-0 leader (this node, while it is the only one) after
    /// it applied that node's registration.
    pub(super) fn votes_alone(&self, mut vshards: impl Iterator<Item = u32>) -> bool {
        let me = self.cfg.node_id;
        if self.catalog.read().nodes.keys().any(|&id| id != me) {
            return false;
        }
        vshards.all(|v| {
            self.shard(v).is_some_and(|s| {
                let metrics = s.raft.metrics();
                let m = metrics.borrow_watched();
                m.membership_config.membership().voter_ids().eq([me])
            })
        })
    }

    pub(super) async fn propose_parts(&self, parts: Vec<Part>) -> Vec<Result<Response, Error>> {
        futures::future::join_all(parts.into_iter().map(|(v, cmd)| self.insert(v, cmd))).await
    }
}
