//! Prometheus metrics, served as text at `/metrics`. Counters and histograms move when a run
//! finishes; the gauges of database state (queue, connectivity) are measured at each scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::Side;
use crate::engine::download::DownloadReport;
use crate::engine::upload::UploadReport;
use crate::service::cycle::SyncCycleResult;
use crate::service::gauges::{Filesystem, LocalStorage};
use crate::service::status::SyncStatus;

/// What a scrape measured: the status and the storage gauges.
pub struct Measured {
    pub status: SyncStatus,
    pub storage: LocalStorage,
    pub filesystems: Vec<Filesystem>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Part {
    /// `upload`, `download` or `cycle`.
    part: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartResult {
    part: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EntityChange {
    entity: String,
    /// `inserted`, `updated`, `deleted` or `skipped`.
    change: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabel {
    side: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FilesystemLabel {
    path: String,
    /// `local_database`, `working_directory` or `log_directory`.
    purpose: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric of the service.
pub struct Metrics {
    registry: Registry,
    uploaded: Counter,
    deduplicated: Counter,
    quarantined: Counter,
    runs: Family<PartResult, Counter>,
    duration: Family<Part, Histogram, fn() -> Histogram>,
    last_success: Family<Part, FloatGauge>,
    entity_rows: Family<EntityChange, Counter>,
    queue_size: FloatGauge,
    oldest_age: FloatGauge,
    quarantined_now: FloatGauge,
    connected: Family<SideLabel, Gauge>,
    running: Gauge,
    consecutive_failures: Family<Part, Gauge>,
    database_size: FloatGauge,
    readings_size: FloatGauge,
    fs_avail: Family<FilesystemLabel, FloatGauge>,
    fs_size: Family<FilesystemLabel, FloatGauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn duration_histogram() -> Histogram {
    // 10 ms .. ~5.8 h
    Histogram::new(exponential_buckets(0.01, 2.5, 15))
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let uploaded = Counter::default();
        let deduplicated = Counter::default();
        let quarantined = Counter::default();
        let runs = Family::<PartResult, Counter>::default();
        let duration =
            Family::<Part, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        let last_success = Family::<Part, FloatGauge>::default();
        let entity_rows = Family::<EntityChange, Counter>::default();
        let queue_size = FloatGauge::default();
        let oldest_age = FloatGauge::default();
        let quarantined_now = FloatGauge::default();
        let connected = Family::<SideLabel, Gauge>::default();
        let running = Gauge::default();
        let consecutive_failures = Family::<Part, Gauge>::default();
        let database_size = FloatGauge::default();
        let readings_size = FloatGauge::default();
        let fs_avail = Family::<FilesystemLabel, FloatGauge>::default();
        let fs_size = Family::<FilesystemLabel, FloatGauge>::default();
        registry.register(
            "meter_sync_readings_uploaded",
            "Readings newly inserted on the remote",
            uploaded.clone(),
        );
        registry.register(
            "meter_sync_readings_deduplicated",
            "Readings resent after a fault that the remote already had (not inserted twice)",
            deduplicated.clone(),
        );
        registry.register(
            "meter_sync_readings_quarantined",
            "Readings quarantined after MAX_ROW_FAILURES refusals by the remote",
            quarantined.clone(),
        );
        registry.register(
            "meter_sync_runs",
            "Finished runs by part and result",
            runs.clone(),
        );
        registry.register(
            "meter_sync_run_duration_seconds",
            "Duration of runs by part",
            duration.clone(),
        );
        registry.register(
            "meter_sync_last_success_timestamp_seconds",
            "Unix time of the last successful run by part",
            last_success.clone(),
        );
        registry.register(
            "meter_sync_entity_rows",
            "Rows changed locally by the download, by entity and change",
            entity_rows.clone(),
        );
        registry.register(
            "meter_sync_queue_size",
            "Readings waiting to be uploaded",
            queue_size.clone(),
        );
        registry.register(
            "meter_sync_oldest_unsent_age_seconds",
            "Age of the oldest reading waiting to be uploaded (0 when none)",
            oldest_age.clone(),
        );
        registry.register(
            "meter_sync_quarantined_readings",
            "Readings currently in quarantine",
            quarantined_now.clone(),
        );
        registry.register(
            "meter_sync_database_connected",
            "1 when the database answers, by side",
            connected.clone(),
        );
        registry.register(
            "meter_sync_running",
            "1 while a run is in progress",
            running.clone(),
        );
        registry.register(
            "meter_sync_consecutive_failures",
            "Runs of the part that failed in a row, up to the latest (0 after a success), since the process started",
            consecutive_failures.clone(),
        );
        for part in ["upload", "download"] {
            // Measured from the start: no run has failed yet.
            consecutive_failures.get_or_create(&Part { part }).set(0);
        }
        registry.register(
            "meter_sync_local_database_size_bytes",
            "Size of the local database on disk (NaN when it cannot be measured)",
            database_size.clone(),
        );
        registry.register(
            "meter_sync_readings_table_size_bytes",
            "Size of the local readings table with its indexes (NaN when it cannot be measured)",
            readings_size.clone(),
        );
        registry.register(
            "meter_sync_filesystem_avail_bytes",
            "Bytes available on the filesystem holding the path, by its purpose (only filesystems that can be measured)",
            fs_avail.clone(),
        );
        registry.register(
            "meter_sync_filesystem_size_bytes",
            "Total bytes of the filesystem holding the path, by its purpose",
            fs_size.clone(),
        );
        if let Some(started) = super::gauges::process_start_time() {
            let start = FloatGauge::default();
            start.set(started);
            registry.register(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                start,
            );
        }
        Self {
            registry,
            uploaded,
            deduplicated,
            quarantined,
            runs,
            duration,
            last_success,
            entity_rows,
            queue_size,
            oldest_age,
            quarantined_now,
            connected,
            running,
            consecutive_failures,
            database_size,
            readings_size,
            fs_avail,
            fs_size,
        }
    }

    fn finished(&self, part: &'static str, success: bool, duration_ms: u64) {
        let result = if success { "success" } else { "failure" };
        self.runs.get_or_create(&PartResult { part, result }).inc();
        let failures = self.consecutive_failures.get_or_create(&Part { part });
        if success {
            failures.set(0);
        } else {
            failures.inc();
        }
        self.duration
            .get_or_create(&Part { part })
            .observe(duration_ms as f64 / 1000.0);
        if success {
            let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
            self.last_success.get_or_create(&Part { part }).set(now);
        }
    }

    fn observe_upload(&self, report: &UploadReport) {
        self.uploaded.inc_by(report.uploaded);
        self.deduplicated.inc_by(report.deduplicated);
        self.quarantined.inc_by(report.quarantined);
        self.finished("upload", report.success(), report.duration_ms);
    }

    fn observe_download(&self, report: &DownloadReport) {
        for e in &report.entities {
            for (change, n) in [
                ("inserted", e.inserted),
                ("updated", e.updated),
                ("deleted", e.deleted),
                ("skipped", e.skipped),
            ] {
                self.entity_rows
                    .get_or_create(&EntityChange {
                        entity: e.entity.clone(),
                        change,
                    })
                    .inc_by(n);
            }
        }
        self.finished("download", report.success(), report.duration_ms);
    }

    /// Counts a finished run.
    pub fn observe(&self, result: &SyncCycleResult) {
        if let Some(upload) = &result.upload {
            self.observe_upload(upload);
        }
        if let Some(download) = &result.download {
            self.observe_download(download);
        }
        if result.kind == crate::data::runlock::RunKind::Cycle {
            self.finished("cycle", result.success, result.total_duration_ms);
        }
    }

    /// The Prometheus text exposition, with the gauges set from the measurements.
    pub fn render(&self, measured: &Measured) -> String {
        let status = &measured.status;
        // What could not be measured is NaN, as the status API says null; never an invented 0.
        let known = |value: Option<f64>| value.unwrap_or(f64::NAN);
        self.queue_size
            .set(known(status.queue_size.map(|n| n as f64)));
        // An empty queue has no oldest reading: its age is 0, measured.
        let oldest = match (status.queue_size, status.oldest_unsent_age_seconds) {
            (Some(0), None) => Some(0.0),
            (_, age) => age,
        };
        self.oldest_age.set(known(oldest));
        self.quarantined_now
            .set(known(status.quarantined_count.map(|n| n as f64)));
        let storage = &measured.storage;
        self.database_size
            .set(known(storage.database_bytes.map(|n| n as f64)));
        self.readings_size
            .set(known(storage.readings_bytes.map(|n| n as f64)));
        self.fs_avail.clear();
        self.fs_size.clear();
        for fs in &measured.filesystems {
            let label = FilesystemLabel {
                path: fs.path.clone(),
                purpose: fs.purpose,
            };
            self.fs_avail
                .get_or_create(&label)
                .set(fs.avail_bytes as f64);
            self.fs_size.get_or_create(&label).set(fs.size_bytes as f64);
        }
        self.connected
            .get_or_create(&SideLabel {
                side: Side::Local.as_str(),
            })
            .set(i64::from(status.local_db_connected));
        self.connected
            .get_or_create(&SideLabel {
                side: Side::Remote.as_str(),
            })
            .set(i64::from(status.remote_db_connected));
        self.running.set(i64::from(status.is_running));
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        text
    }
}
