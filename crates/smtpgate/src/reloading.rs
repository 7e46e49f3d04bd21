//! A value loaded from a file and reloaded when the file changes.
//!
//! Lookup tables such as the aliases file are edited while the daemon runs. [`Reloading`] keeps the
//! parsed value and, at most once per check interval, compares the file's modification time and size
//! with those it last loaded. A changed file is loaded again; a file that no longer loads is logged and
//! the previous value stays in service, so a typo never empties a table.
//!
//! ```
//! # use std::path::Path;
//! # use smtpgate::reloading::Reloading;
//! fn load(path: &Path) -> Result<String, String> {
//!     std::fs::read_to_string(path).map_err(|e| e.to_string())
//! }
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("motd");
//! # std::fs::write(&path, "hello").unwrap();
//! let motd = Reloading::new(path, load)?;
//! assert_eq!(*motd.get(), "hello");
//! # Ok::<(), smtpgate::reloading::ReadError<String>>(())
//! ```

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// How often [`Reloading::get`] looks at the file.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Parses the file at a path into a value; the error is a message for the operator (the loader
/// given may return any error that displays: it is shown in the log of a failed reload).
pub type Loader<T> = Box<dyn Fn(&Path) -> Result<T, String> + Send + Sync>;

/// Why a file could not be read at first: it could not be examined, or its loader refused it.
#[derive(Debug)]
pub enum ReadError<E> {
    /// The file's modification time and size could not be read.
    Stamp(PathBuf, std::io::Error),
    /// The loader's own error, as it gave it (e.g. every mistake in a configuration file).
    Load(E),
}

impl<E: fmt::Display> fmt::Display for ReadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Stamp(path, error) => write!(f, "{}: {error}", path.display()),
            ReadError::Load(error) => error.fmt(f),
        }
    }
}

impl<E: fmt::Display + fmt::Debug> std::error::Error for ReadError<E> {}

/// For callers whose own errors are still messages.
impl<E: fmt::Display> From<ReadError<E>> for String {
    fn from(error: ReadError<E>) -> String {
        error.to_string()
    }
}

/// Turns a loader with its own error type into a [`Loader`].
fn boxed<T: 'static, E: fmt::Display + 'static>(
    load: impl Fn(&Path) -> Result<T, E> + Send + Sync + 'static,
) -> Loader<T> {
    Box::new(move |path| load(path).map_err(|e| e.to_string()))
}

/// A value loaded from a file, reloaded by [`Reloading::get`] when the file changes.
pub struct Reloading<T> {
    path: PathBuf,
    load: Loader<T>,
    interval: Duration,
    value: RwLock<Arc<T>>,
    /// Held by the one caller that is checking the file; the others keep using the current value.
    check: Mutex<Check>,
}

/// What the last look at the file found.
struct Check {
    at: Instant,
    /// `None` when the file could not be examined.
    stamp: Option<Stamp>,
}

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        let meta = fs::metadata(path)?;
        Ok(Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
        })
    }
}

/// A file's value as read once, with the version of the file it was read from. The configuration
/// holds these for the files it names (the shaping file, the bounce rules), so that a mistake
/// there is a configuration error, and the service that reloads the file starts from this value
/// ([`Reloading::from_loaded`]) instead of parsing the file a second time.
pub struct Loaded<T> {
    pub path: PathBuf,
    stamp: Stamp,
    pub value: Arc<T>,
}

impl<T> Clone for Loaded<T> {
    fn clone(&self) -> Self {
        Loaded {
            path: self.path.clone(),
            stamp: self.stamp,
            value: self.value.clone(),
        }
    }
}

impl<T> fmt::Debug for Loaded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<T> Loaded<T> {
    /// Reads and parses the file now.
    pub fn read<E>(path: PathBuf, load: impl Fn(&Path) -> Result<T, E>) -> Result<Self, ReadError<E>> {
        // The stamp is taken before reading, so a change made during the load is seen by the next check.
        let stamp = match Stamp::of(&path) {
            Ok(stamp) => stamp,
            Err(e) => return Err(ReadError::Stamp(path, e)),
        };
        let value = Arc::new(load(&path).map_err(ReadError::Load)?);
        Ok(Loaded { path, stamp, value })
    }
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Loads now; an error here is returned (the config check reports it).
    pub fn new<E: fmt::Display + 'static>(
        path: PathBuf,
        load: impl Fn(&Path) -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Self, ReadError<E>> {
        Self::with_interval(path, load, CHECK_INTERVAL)
    }

    /// Like [`Reloading::new`], looking at the file at most once per `interval`.
    pub fn with_interval<E: fmt::Display + 'static>(
        path: PathBuf,
        load: impl Fn(&Path) -> Result<T, E> + Send + Sync + 'static,
        interval: Duration,
    ) -> Result<Self, ReadError<E>> {
        let loaded = Loaded::read(path, &load)?;
        Ok(Self::from_loaded_with_interval(loaded, load, interval))
    }

    /// Starts from a value the configuration already read: the file is not parsed twice.
    pub fn from_loaded<E: fmt::Display + 'static>(
        loaded: Loaded<T>,
        load: impl Fn(&Path) -> Result<T, E> + Send + Sync + 'static,
    ) -> Self {
        Self::from_loaded_with_interval(loaded, load, CHECK_INTERVAL)
    }

    fn from_loaded_with_interval<E: fmt::Display + 'static>(
        loaded: Loaded<T>,
        load: impl Fn(&Path) -> Result<T, E> + Send + Sync + 'static,
        interval: Duration,
    ) -> Self {
        Reloading {
            path: loaded.path,
            load: boxed(load),
            interval,
            value: RwLock::new(loaded.value),
            check: Mutex::new(Check {
                at: Instant::now(),
                stamp: Some(loaded.stamp),
            }),
        }
    }

    /// The current value. At most once per interval it checks the file's modification time and size; if
    /// they changed it reloads; a reload error is logged and the previous value stays.
    pub fn get(&self) -> Arc<T> {
        // A caller that finds another one checking does not wait for it.
        if let Ok(mut check) = self.check.try_lock()
            && check.at.elapsed() >= self.interval
        {
            check.at = Instant::now();
            self.refresh(&mut check);
        }
        self.current()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn current(&self) -> Arc<T> {
        Arc::clone(&self.value.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn refresh(&self, check: &mut Check) {
        let stamp = match Stamp::of(&self.path) {
            Ok(stamp) => stamp,
            Err(e) => {
                if check.stamp.take().is_some() {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot reload; keeping the previous version");
                }
                return;
            }
        };
        if check.stamp == Some(stamp) {
            return;
        }
        // Remembered even when the load fails, so a broken file is reported once, not every interval.
        check.stamp = Some(stamp);
        match (self.load)(&self.path) {
            Ok(value) => {
                *self.value.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
                tracing::info!(path = %self.path.display(), "reloaded");
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot reload; keeping the previous version")
            }
        }
    }
}

impl<T> fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading")
            .field("path", &self.path)
            .field("interval", &self.interval)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_number(path: &Path) -> Result<u32, String> {
        let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
        text.trim().parse().map_err(|e| format!("not a number: {e}"))
    }

    const FAST: Duration = Duration::from_millis(10);

    /// Calls `get` until it returns `want` or five seconds pass.
    fn wait_for(r: &Reloading<u32>, want: u32) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = *r.get();
            if got == want || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn loads_at_creation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        fs::write(&path, "7").unwrap();
        let r = Reloading::new(path.clone(), load_number).unwrap();
        assert_eq!(*r.get(), 7);
        assert_eq!(r.path(), path);
    }

    #[test]
    fn creation_reports_a_broken_or_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        let missing = Reloading::new(path.clone(), load_number).unwrap_err().to_string();
        assert!(missing.contains(&path.display().to_string()), "{missing}");
        fs::write(&path, "seven").unwrap();
        let broken = Reloading::new(path, load_number).unwrap_err().to_string();
        assert!(broken.starts_with("not a number"), "{broken}");
    }

    #[test]
    fn a_changed_file_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        fs::write(&path, "7").unwrap();
        let r = Reloading::with_interval(path.clone(), load_number, FAST).unwrap();
        fs::write(&path, "1234").unwrap();
        assert_eq!(wait_for(&r, 1234), 1234);
    }

    #[test]
    fn a_broken_file_keeps_the_previous_value_until_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        fs::write(&path, "7").unwrap();
        let r = Reloading::with_interval(path.clone(), load_number, FAST).unwrap();
        fs::write(&path, "seven").unwrap();
        // Wait until the broken version has certainly been looked at, then check nothing changed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.check.lock().unwrap().stamp != Stamp::of(&path).ok() && Instant::now() < deadline {
            assert_eq!(*r.get(), 7);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            r.check.lock().unwrap().stamp,
            Stamp::of(&path).ok(),
            "the broken file was never examined"
        );
        assert_eq!(*r.get(), 7);
        fs::write(&path, "42").unwrap();
        assert_eq!(wait_for(&r, 42), 42);
    }

    #[test]
    fn a_removed_file_keeps_the_previous_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        fs::write(&path, "7").unwrap();
        let r = Reloading::with_interval(path.clone(), load_number, FAST).unwrap();
        fs::remove_file(&path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.check.lock().unwrap().stamp.is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(*r.get(), 7);
        }
        assert_eq!(*r.get(), 7);
        fs::write(&path, "8").unwrap();
        assert_eq!(wait_for(&r, 8), 8);
    }

    #[test]
    fn the_file_is_not_examined_within_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        fs::write(&path, "7").unwrap();
        let r = Reloading::with_interval(path.clone(), load_number, Duration::from_secs(3600)).unwrap();
        fs::write(&path, "1234").unwrap();
        assert_eq!(*r.get(), 7);
    }
}
