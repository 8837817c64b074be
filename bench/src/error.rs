//! What can go wrong in one client operation, small enough to count by kind in a report.

use jabberfarm_proto::xml::StreamError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A target (given, or named in a redirect) outside 127.0.0.0/8 and ::1.
    #[error("refusing {0}: the bench only loads servers on loopback (127.0.0.0/8, ::1)")]
    NotLoopback(String),
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("connect {0}: {1}")]
    Connect(std::net::SocketAddr, std::io::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection during {0}")]
    Closed(&'static str),
    #[error("no answer within the step timeout during {0}")]
    Timeout(&'static str),
    /// The server's XML was not what a stream should be.
    #[error("XML from the server: {0}")]
    Xml(StreamError),
    /// The server closed the stream with a stream error (see-other-host is [`Self::Redirect`]).
    #[error("stream error <{0}/> from the server{1}")]
    StreamError(String, String),
    /// `<see-other-host>HOST:PORT</see-other-host>` (RFC 6120 §4.9.3.19).
    #[error("redirected to {0}")]
    Redirect(String),
    #[error("redirected more than {0} times")]
    TooManyRedirects(usize),
    /// A well-formed answer we did not expect at this step.
    #[error("{0}")]
    Protocol(String),
    #[error("SASL failure <{0}/> for {1}")]
    Auth(String, String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Setup(String),
}

impl BenchError {
    /// A short label to count errors by in a report.
    pub fn kind(&self) -> String {
        match self {
            BenchError::NotLoopback(_) => "not-loopback".into(),
            BenchError::Resolve(..) => "resolve".into(),
            BenchError::Connect(_, e) => format!("connect: {}", e.kind()),
            BenchError::Io(e) => format!("io: {}", e.kind()),
            BenchError::Closed(step) => format!("closed during {step}"),
            BenchError::Timeout(step) => format!("timeout during {step}"),
            BenchError::Xml(e) => format!("bad XML: {}", e.condition.name()),
            BenchError::StreamError(c, _) => format!("stream error: {c}"),
            BenchError::Redirect(_) => "unexpected redirect".into(),
            BenchError::TooManyRedirects(_) => "too many redirects".into(),
            BenchError::Protocol(_) => "protocol".into(),
            BenchError::Auth(c, _) => format!("sasl: {c}"),
            BenchError::Tls(_) => "tls".into(),
            BenchError::Setup(_) => "setup".into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, BenchError>;

impl From<jabberfarm_testkit::scram::ScramError> for BenchError {
    fn from(e: jabberfarm_testkit::scram::ScramError) -> Self {
        BenchError::Protocol(e.0)
    }
}
