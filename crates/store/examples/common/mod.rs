//! The arguments both store benches take: `[URL] [COUNT ...]`.

use anyhow::Context as _;
use tempfile::TempDir;

/// The store URL (a fresh SQLite file in a temporary directory when none is given) and the
/// positional counts after it.
pub struct BenchArgs {
    args: Vec<String>,
    pub url: String,
    /// Holds the default database's directory for the run.
    _dir: TempDir,
}

impl BenchArgs {
    pub fn from_env() -> anyhow::Result<Self> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let dir = tempfile::tempdir()?;
        let url = match args.first() {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", dir.path().join("bench.db").display()),
        };
        Ok(BenchArgs {
            args,
            url,
            _dir: dir,
        })
    }

    /// The positive count at `position` (1 = the first after the URL), `default` when absent.
    pub fn count(&self, position: usize, name: &str, default: usize) -> anyhow::Result<usize> {
        let count = self
            .args
            .get(position)
            .map(|n| n.parse())
            .transpose()
            .context(name.to_owned())?
            .unwrap_or(default);
        anyhow::ensure!(count > 0, "{name} must be positive");
        Ok(count)
    }
}
