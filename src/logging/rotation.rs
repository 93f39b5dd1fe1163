//! `LOG_FILE` rotation as spec 004's "Log Rotation" asks: a new file every day and whenever
//! the current one passes 100 MB, rotated files gzipped, files older than 30 days removed.
//! The moving, compressing and pruning are `file-rotate`'s; this adds the daily trigger (that
//! crate rotates on one condition only) and checks the path up front, so a log file that
//! cannot be written is a configuration error at start-up rather than logs lost in silence.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chrono::{DateTime, Local, NaiveDate};
use file_rotate::compression::Compression;
use file_rotate::suffix::{AppendTimestamp, DateFrom, FileLimit};
use file_rotate::{ContentLimit, FileRotate};

/// A file is rotated once it passes this size.
pub const MAX_LOG_BYTES: usize = 100 * 1024 * 1024;
/// Rotated files older than this are removed.
pub const KEPT_LOG_DAYS: i64 = 30;
/// Log files may hold hostnames and error texts: owner and group only.
const LOG_FILE_MODE: u32 = 0o640;

/// The local date now.
fn today() -> NaiveDate {
    Local::now().date_naive()
}

/// The log file writer: appends to the path, rotates daily and past `max_bytes`.
pub struct RotatingFile {
    inner: FileRotate<AppendTimestamp>,
    /// The local date the current file's contents belong to.
    day: NaiveDate,
    today: fn() -> NaiveDate,
}

impl RotatingFile {
    /// Opens (or creates) `path` with the spec's policy.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::open_with(path, MAX_LOG_BYTES, today)
    }

    /// Opens `path`, rotating past `max_bytes` and whenever `today` moves on.
    pub fn open_with(path: &Path, max_bytes: usize, today: fn() -> NaiveDate) -> io::Result<Self> {
        // Checked here, because `file-rotate` drops writes to a file it cannot open (and
        // panics on a directory it cannot create).
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut options = OpenOptions::new();
        options
            .read(true)
            .create(true)
            .append(true)
            .mode(LOG_FILE_MODE);
        let existing = options.open(path)?.metadata()?;
        // A file written on an earlier day is rotated at the first write.
        let day = match existing.modified() {
            Ok(modified) if existing.len() > 0 => DateTime::<Local>::from(modified).date_naive(),
            _ => today(),
        };
        let inner = FileRotate::new(
            path,
            AppendTimestamp::with_format(
                "%Y%m%dT%H%M%S",
                FileLimit::Age(chrono::Duration::days(KEPT_LOG_DAYS)),
                DateFrom::Now,
            ),
            ContentLimit::BytesSurpassed(max_bytes.max(1)),
            Compression::OnRotate(0),
            Some(options),
        );
        Ok(Self { inner, day, today })
    }

    /// The rotated files, oldest first.
    pub fn rotated(&mut self) -> Vec<std::path::PathBuf> {
        self.inner.log_paths()
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let today = (self.today)();
        if today != self.day {
            self.inner.rotate()?;
            self.day = today;
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::atomic::{AtomicI64, Ordering};

    static DAY_OFFSET: AtomicI64 = AtomicI64::new(0);

    fn test_today() -> NaiveDate {
        today() + chrono::Duration::days(DAY_OFFSET.load(Ordering::SeqCst))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn gunzip(path: &Path) -> String {
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    #[test]
    fn a_file_is_rotated_past_its_size_and_on_a_new_day_and_old_ones_are_gzipped_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meter-sync.log");
        // Thirty-one days old: removed at the next rotation; a day old: kept.
        std::fs::write(dir.path().join("meter-sync.log.20000101T000000.gz"), b"").unwrap();
        let recent = (Local::now() - chrono::Duration::days(1)).format("%Y%m%dT%H%M%S");
        let recent = format!("meter-sync.log.{recent}.gz");
        std::fs::write(dir.path().join(&recent), b"").unwrap();

        let mut log = RotatingFile::open_with(&path, 1000, test_today).unwrap();
        log.write_all(&[b'a'; 600]).unwrap();
        log.write_all(&[b'b'; 600]).unwrap();
        // Past 1000 bytes after a whole write: the next write starts a new file.
        log.write_all(b"c\n").unwrap();
        log.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "c\n");
        let rotated = log.rotated();
        assert_eq!(rotated.len(), 2, "{:?}", names(dir.path()));
        let newest = rotated.last().unwrap();
        assert!(newest.to_string_lossy().ends_with(".gz"), "{newest:?}");
        assert_eq!(gunzip(newest), "a".repeat(600) + &"b".repeat(600));
        let listed = names(dir.path());
        assert!(
            !listed.contains(&"meter-sync.log.20000101T000000.gz".to_string()),
            "{listed:?}"
        );
        assert!(listed.contains(&recent), "{listed:?}");

        // A new day: the first write of it goes to a new file.
        DAY_OFFSET.store(1, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        log.write_all(b"tomorrow\n").unwrap();
        log.flush().unwrap();
        DAY_OFFSET.store(0, Ordering::SeqCst);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "tomorrow\n");
        let rotated = log.rotated();
        assert_eq!(rotated.len(), 3);
        assert_eq!(gunzip(rotated.last().unwrap()), "c\n");
    }

    #[test]
    fn a_file_left_from_an_earlier_day_is_rotated_at_the_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        std::fs::write(&path, "yesterday\n").unwrap();
        let yesterday = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400 + 60);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(yesterday)
            .unwrap();
        let mut log = RotatingFile::open_with(&path, MAX_LOG_BYTES, today).unwrap();
        log.write_all(b"today\n").unwrap();
        log.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "today\n");
        assert_eq!(gunzip(log.rotated().last().unwrap()), "yesterday\n");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777 & !0o640, 0, "{mode:o}");
    }

    #[test]
    fn a_log_path_that_cannot_be_written_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "").unwrap();
        // A directory where a file stands.
        assert!(RotatingFile::open(&file.join("meter-sync.log")).is_err());
        // The path is a directory.
        assert!(RotatingFile::open(dir.path()).is_err());
    }
}
