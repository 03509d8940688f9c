//! The query layer's error, sorted by who is at fault. Client protocols map `ErrorKind` to
//! HTTP statuses (and later SQLSTATEs) in one place each.

use datafusion::error::DataFusionError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad SQL, unknown table/column, type errors: the client must change the request.
    BadInput,
    /// The object named does not exist.
    NotFound,
    /// The object already exists.
    AlreadyExists,
    /// Retryable: no leader, shutting down.
    Unavailable,
    /// The disk is full; retry when space returns.
    DiskFull,
    /// The request was too large.
    TooLarge,
    /// The statement ran past `statement_timeout`.
    Timeout,
    /// A statement inside a transaction block that already failed (until ROLLBACK).
    TxAborted,
    /// Valid SQL that Shoal does not do.
    NotSupported,
    /// Valid SQL this client may not run (a server file, a privilege it lacks).
    Forbidden,
    /// The client has not said who it is, or the user it logged in as is gone.
    Unauthenticated,
    /// A bug: logged, reported with little detail.
    Internal,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    pub kind: ErrorKind,
    pub message: String,
    /// A SQLSTATE more specific than the kind's default (`42601` syntax, `42703` column…).
    pub code: Option<&'static str>,
}

impl QueryError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> QueryError {
        QueryError {
            kind,
            message: message.into(),
            code: None,
        }
    }

    pub fn bad_input(message: impl Into<String>) -> QueryError {
        QueryError::new(ErrorKind::BadInput, message)
    }

    /// An invalid value for a setting or parameter (SQLSTATE 22023).
    pub fn invalid_value(message: impl Into<String>) -> QueryError {
        QueryError::new(ErrorKind::BadInput, message).with_code("22023")
    }

    pub fn with_code(mut self, code: &'static str) -> QueryError {
        self.code = Some(code);
        self
    }

    /// The Postgres SQLSTATE for this error.
    pub fn sqlstate(&self) -> &'static str {
        if let Some(c) = self.code {
            return c;
        }
        match self.kind {
            ErrorKind::BadInput => "42000",
            ErrorKind::NotFound => "42P01",
            ErrorKind::AlreadyExists => "42P07",
            ErrorKind::Unavailable => "57P03",
            ErrorKind::DiskFull => "53100",
            ErrorKind::TooLarge => "54000",
            ErrorKind::Timeout => "57014",
            ErrorKind::TxAborted => "25P02",
            ErrorKind::NotSupported => "0A000",
            ErrorKind::Forbidden => "42501",
            ErrorKind::Unauthenticated => "28000",
            ErrorKind::Internal => "XX000",
        }
    }
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> QueryError {
        classify(e)
    }
}

fn classify(e: DataFusionError) -> QueryError {
    match e {
        DataFusionError::External(inner) => match inner.downcast::<QueryError>() {
            Ok(q) => *q,
            Err(other) => QueryError::new(ErrorKind::Internal, other.to_string()),
        },
        DataFusionError::Context(ctx, inner) => {
            let mut q = classify(*inner);
            q.message = format!("{ctx}: {}", q.message);
            q
        }
        DataFusionError::Diagnostic(_, inner) => classify(*inner),
        DataFusionError::Collection(mut all) if !all.is_empty() => classify(all.remove(0)),
        DataFusionError::Shared(inner) => QueryError::new(ErrorKind::Internal, inner.to_string()),
        DataFusionError::SQL(..) => QueryError::bad_input(e.to_string()).with_code("42601"),
        DataFusionError::SchemaError(ref se, _)
            if matches!(**se, datafusion::common::SchemaError::FieldNotFound { .. }) =>
        {
            QueryError::bad_input(e.to_string()).with_code("42703")
        }
        DataFusionError::NotImplemented(_) => {
            QueryError::new(ErrorKind::NotSupported, e.to_string())
        }
        DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::Configuration(_)
        | DataFusionError::ArrowError(..)
        | DataFusionError::Execution(_) => {
            let msg = e.to_string();
            if msg.contains("table") && msg.contains("not found") {
                QueryError::new(ErrorKind::NotFound, msg)
            } else {
                QueryError::bad_input(msg)
            }
        }
        DataFusionError::ResourcesExhausted(m) => QueryError::new(ErrorKind::TooLarge, m),
        other => QueryError::new(ErrorKind::Internal, other.to_string()),
    }
}

impl From<shoal_consensus::Error> for QueryError {
    fn from(e: shoal_consensus::Error) -> QueryError {
        use shoal_consensus::Error as E;
        let kind = match &e {
            E::NotLeader { .. } | E::Unavailable { .. } | E::NotHosted { .. } => {
                ErrorKind::Unavailable
            }
            E::Rejected(_) => ErrorKind::BadInput,
            E::DiskFull(_) => ErrorKind::DiskFull,
            E::Storage(shoal_storage::Error::DiskFull { .. }) => ErrorKind::DiskFull,
            _ => ErrorKind::Internal,
        };
        QueryError::new(kind, e.to_string())
    }
}

pub type Result<T, E = QueryError> = std::result::Result<T, E>;
