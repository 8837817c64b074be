//! `[tls]`: the certificate and key for c2s (and s2s), and the check that their files exist.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Problem;

/// TLS for c2s (and s2s); paths already resolved against the data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `data_dir/tls/ca.pem`: where `generate` writes the demo CA for clients to trust.
    pub ca: PathBuf,
    /// Demo: generate a local CA and a certificate for the domain on first start.
    pub generate: bool,
    /// No login and no redirect before STARTTLS / direct TLS.
    pub required: bool,
}

#[derive(Deserialize, Default)]
pub(crate) struct RawTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    generate: Option<bool>,
    required: Option<bool>,
}

pub(crate) fn tls(raw: RawTls, data_dir: &Path, problems: &mut Vec<Problem>) -> TlsConfig {
    let mut path = |key: &str, value: Option<PathBuf>, default: &str| match value {
        Some(p) if p.as_os_str().is_empty() => {
            problems.push(Problem::new(key, "empty"));
            data_dir.join(default)
        }
        Some(p) => data_dir.join(p),
        None => data_dir.join(default),
    };
    let tls = TlsConfig {
        cert: path("tls.cert", raw.cert, "tls/cert.pem"),
        key: path("tls.key", raw.key, "tls/key.pem"),
        ca: data_dir.join("tls/ca.pem"),
        generate: raw.generate.unwrap_or(false),
        required: raw.required.unwrap_or(true),
    };
    problems.extend(tls_file_problems(&tls));
    tls
}

pub(crate) fn tls_file_problems(tls: &TlsConfig) -> Vec<Problem> {
    if tls.generate {
        return Vec::new();
    }
    let mut problems = Vec::new();
    for (key, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
        let message = match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => match std::fs::File::open(path) {
                Ok(_) => continue,
                Err(e) => format!("cannot read {}: {e}", path.display()),
            },
            Ok(_) => format!("{} is not a file", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!(
                "{} does not exist (set tls.generate = true for a demo certificate)",
                path.display()
            ),
            Err(e) => format!("cannot read {}: {e}", path.display()),
        };
        problems.push(Problem::new(key, message));
    }
    problems
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use crate::{ConfigError, FarmConfig};

    #[test]
    fn certificate_files_must_exist_unless_generated() {
        let dir = scratch_dir("tls");
        let text = with_nodes(&HEAD.replace("generate = true", "generate = false"));
        let config = FarmConfig::from_str(&text, Path::new("c.toml"), Some(&dir));
        let Err(ConfigError::Invalid { problems, .. }) = config else {
            panic!("{config:?}")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["tls.cert", "tls.key"]);
        assert!(problems[0].message.contains("does not exist"));
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        std::fs::write(dir.join("tls/cert.pem"), "").unwrap();
        std::fs::write(dir.join("tls/key.pem"), "").unwrap();
        let config = FarmConfig::from_str(&text, Path::new("c.toml"), Some(&dir)).unwrap();
        assert!(config.check_files().is_empty());
        std::fs::remove_file(dir.join("tls/key.pem")).unwrap();
        let later = config.check_files();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].key, "tls.key");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
