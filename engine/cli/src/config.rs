//! Where a deployment keeps its log and read models, and where it listens:
//! flags first, then their environment twins (clap reads both), then an
//! optional TOML file, then the embedded defaults.
//!
//! ```toml
//! # spool.toml
//! data_dir = "/var/lib/spool"
//! listen = "0.0.0.0:8080"
//! log = "kafka://kafka-1:9092,kafka-2:9092/spool-events?partitions=16"
//! views = "postgres://spool@db/spool"
//! rate_limit_store = "redis://cache:6379"
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use spool_api::SharedStore;
use spool_log::{KafkaLog, KafkaOptions, Log};
use spool_projections::{Location, Views};

use crate::datadir::DataDir;

/// The topic when a `kafka://` URL names none.
const DEFAULT_TOPIC: &str = "spool-events";
const DEFAULT_PARTITIONS: u32 = 8;
const DEFAULT_DATA_DIR: &str = "./spool-data";
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The options every command shares.
#[derive(Args)]
pub(crate) struct ConfigArgs {
    /// A TOML file giving any of `data_dir`, `listen`, `log`, `views` and
    /// `rate_limit_store`; flags and environment variables override it.
    #[arg(long, global = true, env = "SPOOL_CONFIG")]
    config: Option<PathBuf>,

    /// The data directory: `log.db` and `views.db` when those are embedded,
    /// and `spool.lock`, held by a running server. [default: ./spool-data]
    #[arg(long, global = true, env = "SPOOL_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// The event log: `sqlite` (`log.db` in the data directory) or
    /// `kafka://HOST:PORT[,HOST:PORT…][/TOPIC][?partitions=N]` (topic
    /// `spool-events`, 8 partitions when created). [default: sqlite]
    #[arg(long, global = true, env = "SPOOL_LOG")]
    log: Option<String>,

    /// The read models: `sqlite` (`views.db` in the data directory) or a
    /// `postgres://` URL. [default: sqlite]
    #[arg(long, global = true, env = "SPOOL_VIEWS")]
    views: Option<String>,

    /// Where rate limits are counted: `memory` (in each process) or a
    /// `redis://[:PASSWORD@]HOST[:PORT][/DB]` URL shared by every
    /// instance, so that a key's limit holds across them. [default: memory]
    #[arg(long, global = true, env = "SPOOL_RATE_LIMIT_STORE")]
    rate_limit_store: Option<String>,
}

/// What a file may set; every key optional.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    log: Option<String>,
    views: Option<String>,
    rate_limit_store: Option<String>,
}

/// Where the event log is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum LogTarget {
    /// `log.db` in the data directory.
    Sqlite,
    Kafka(KafkaOptions),
}

/// Where the read models are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ViewsTarget {
    /// `views.db` in the data directory.
    Sqlite,
    Postgres(String),
}

/// The resolved configuration.
pub(crate) struct Config {
    pub(crate) data_dir: DataDir,
    pub(crate) log: LogTarget,
    pub(crate) views: ViewsTarget,
    /// From the file only; `serve --listen` and `SPOOL_LISTEN` override it.
    pub(crate) listen: Option<String>,
    /// The shared rate-limit store; `None`: each process counts alone.
    pub(crate) rate_limit_store: Option<SharedStore>,
}

impl ConfigArgs {
    pub(crate) fn resolve(self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = self.data_dir.or(file.data_dir).unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let log = match self.log.or(file.log) {
            Some(url) => parse_log(&url)?,
            None => LogTarget::Sqlite,
        };
        let views = match self.views.or(file.views) {
            Some(url) => parse_views(&url)?,
            None => ViewsTarget::Sqlite,
        };
        let rate_limit_store = match self.rate_limit_store.or(file.rate_limit_store) {
            Some(url) => parse_rate_limit_store(&url)?,
            None => None,
        };
        Ok(Config {
            data_dir: DataDir::new(data_dir),
            log,
            views,
            listen: file.listen,
            rate_limit_store,
        })
    }
}

impl Config {
    /// Opens the configured log: for appending, or read-only where the
    /// backend has such a mode (an operator's view beside a running server).
    pub(crate) async fn open_log(&self, read_only: bool) -> anyhow::Result<Arc<dyn Log>> {
        match &self.log {
            LogTarget::Sqlite => {
                let log = if read_only {
                    self.data_dir.open_log_read_only().await?
                } else {
                    self.data_dir.open_log_writer().await?
                };
                Ok(log)
            }
            LogTarget::Kafka(options) => Ok(open_kafka(options).await?),
        }
    }

    /// Opens the configured read models.
    pub(crate) async fn open_views(&self) -> anyhow::Result<Views> {
        let location = match &self.views {
            ViewsTarget::Sqlite => Location::Sqlite(self.data_dir.views_path()),
            ViewsTarget::Postgres(url) => Location::Postgres(url.clone()),
        };
        let shown = match &location {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(url) => redacted(url),
        };
        Views::open(location)
            .await
            .with_context(|| format!("cannot open the read models at {shown}"))
    }
}

/// Opens the log in Kafka, saying where on failure.
pub(crate) async fn open_kafka(options: &KafkaOptions) -> anyhow::Result<Arc<KafkaLog>> {
    let log = KafkaLog::open(options.clone()).await.with_context(|| {
        format!("cannot open the event log in Kafka topic {} at {}", options.topic, options.brokers)
    })?;
    Ok(Arc::new(log))
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in the configuration file {}", path.display()))
}

/// Parses `--log`.
pub(crate) fn parse_log(url: &str) -> anyhow::Result<LogTarget> {
    if url == "sqlite" {
        return Ok(LogTarget::Sqlite);
    }
    let Some(rest) = url.strip_prefix("kafka://") else {
        bail!("--log {url:?}: expected `sqlite` or `kafka://HOST:PORT[/TOPIC][?partitions=N]`");
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (brokers, topic) = rest.split_once('/').unwrap_or((rest, ""));
    if brokers.is_empty() || brokers.split(',').any(|b| !b.contains(':')) {
        bail!("--log {url:?}: name the brokers as HOST:PORT, separated by commas");
    }
    let topic = if topic.is_empty() { DEFAULT_TOPIC } else { topic };
    if !topic.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        bail!("--log {url:?}: a topic name has only letters, digits, `.`, `_` and `-`");
    }
    let mut options = KafkaOptions {
        partitions: DEFAULT_PARTITIONS,
        timeout: Duration::from_secs(10),
        ..KafkaOptions::new(brokers, topic)
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("partitions", n)) => {
                options.partitions = n.parse().ok().filter(|n| *n > 0).with_context(|| {
                    format!("--log {url:?}: partitions must be a whole number above 0")
                })?;
            }
            _ => bail!("--log {url:?}: unknown option {pair:?} (known: partitions=N)"),
        }
    }
    Ok(LogTarget::Kafka(options))
}

/// Parses `--views`.
pub(crate) fn parse_views(url: &str) -> anyhow::Result<ViewsTarget> {
    if url == "sqlite" {
        Ok(ViewsTarget::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(ViewsTarget::Postgres(url.to_owned()))
    } else {
        bail!("--views {url:?}: expected `sqlite` or a `postgres://` URL")
    }
}

/// Parses `--rate-limit-store`: `memory`, or a Redis URL (checked now, so
/// that a typo fails at start rather than at the first request).
pub(crate) fn parse_rate_limit_store(url: &str) -> anyhow::Result<Option<SharedStore>> {
    if url == "memory" {
        return Ok(None);
    }
    let store = SharedStore::redis(url)
        .with_context(|| "--rate-limit-store: expected `memory` or a `redis://` URL")?;
    Ok(Some(store))
}

/// `url` without its password, for messages.
pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_urls_name_brokers_topic_and_partitions() {
        let LogTarget::Kafka(options) =
            parse_log("kafka://a:9092,b:9093/orders?partitions=12").unwrap()
        else {
            panic!("not kafka");
        };
        assert_eq!((options.brokers.as_str(), options.topic.as_str()), ("a:9092,b:9093", "orders"));
        assert_eq!(options.partitions, 12);
        let LogTarget::Kafka(defaults) = parse_log("kafka://a:9092").unwrap() else { panic!() };
        assert_eq!(
            (defaults.topic.as_str(), defaults.partitions),
            (DEFAULT_TOPIC, DEFAULT_PARTITIONS)
        );
        assert_eq!(parse_log("sqlite").unwrap(), LogTarget::Sqlite);
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("mysql://x", "expected `sqlite` or `kafka://"),
            ("kafka://", "HOST:PORT"),
            ("kafka://host", "HOST:PORT"),
            ("kafka://h:1/bad topic", "topic name"),
            ("kafka://h:1/t?partitions=0", "above 0"),
            ("kafka://h:1/t?replicas=3", "unknown option"),
        ] {
            let error = parse_log(url).unwrap_err().to_string();
            assert!(error.contains(says), "{url}: {error}");
        }
        assert!(parse_views("sqlite://x").unwrap_err().to_string().contains("postgres://"));
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/spool\"\nlisten = \"0.0.0.0:9000\"\nlog = \"kafka://k:9092/t\"\nviews = \"postgres://db/spool\"\n",
        )
        .unwrap();
        let args = |log: Option<&str>| ConfigArgs {
            config: Some(path.clone()),
            data_dir: None,
            log: log.map(str::to_owned),
            views: None,
            rate_limit_store: None,
        };
        let from_file = args(None).resolve().unwrap();
        assert_eq!(from_file.data_dir.root(), Path::new("/srv/spool"));
        assert_eq!(from_file.listen.as_deref(), Some("0.0.0.0:9000"));
        assert!(matches!(from_file.log, LogTarget::Kafka(ref k) if k.topic == "t"));
        assert_eq!(from_file.views, ViewsTarget::Postgres("postgres://db/spool".into()));
        assert_eq!(args(Some("sqlite")).resolve().unwrap().log, LogTarget::Sqlite);

        std::fs::write(&path, "lgo = \"sqlite\"\n").unwrap();
        let Err(error) = args(None).resolve() else { panic!("an unknown key was accepted") };
        let error = format!("{error:#}");
        assert!(error.contains("unknown field") && error.contains("lgo"), "{error}");
    }

    #[test]
    fn rate_limit_stores_are_memory_or_redis_urls() {
        assert!(parse_rate_limit_store("memory").unwrap().is_none());
        let store = parse_rate_limit_store("redis://:secret@127.0.0.1:6379/2").unwrap().unwrap();
        assert!(!format!("{store:?}").contains("secret"), "{store:?}");
        let error = format!("{:#}", parse_rate_limit_store("redis-cluster://x").unwrap_err());
        assert!(error.contains("--rate-limit-store") && error.contains("redis://"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.toml");
        std::fs::write(&path, "rate_limit_store = \"redis://cache:6379\"\n").unwrap();
        let args = |flag: Option<&str>| ConfigArgs {
            config: Some(path.clone()),
            data_dir: None,
            log: None,
            views: None,
            rate_limit_store: flag.map(str::to_owned),
        };
        let from_file = args(None).resolve().unwrap().rate_limit_store.unwrap();
        assert!(format!("{from_file:?}").contains("cache:6379"), "{from_file:?}");
        assert!(args(Some("memory")).resolve().unwrap().rate_limit_store.is_none());
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redacted("postgres://u:secret@db/x"), "postgres://u:***@db/x");
        assert_eq!(redacted("postgres://db/x"), "postgres://db/x");
    }
}
