//! Sample data for tests, `demo` and benchmarks: the remote schema of each shipped profile and
//! deterministic generators. Rows are generated inside PostgreSQL (`generate_series`), so a
//! million-row fixture costs one statement and no client memory.

use tokio_postgres::GenericClient;

use crate::config::Side;
use crate::data::pg::PgError;

/// Which shipped profile's remote layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `profiles/default.toml`: tenant, meter, register, device_register, meter_readings.
    Default,
    /// The tenant-scoped variant of `profiles/db-sync-process.toml` (spec 004 plus
    /// `meters.tenant_id`): tenant, meters, meter_readings.
    DbSyncProcess,
    /// Spec 004's remote schema exactly as 004 writes it (`meters` without a tenant), for
    /// `profiles/db-sync-process.toml` as shipped.
    Spec004,
}

impl Layout {
    /// The remote DDL.
    pub fn remote_schema(self) -> &'static str {
        match self {
            Layout::Default => include_str!("../fixtures/remote-default.sql"),
            Layout::DbSyncProcess => include_str!("../fixtures/remote-db-sync-process.sql"),
            Layout::Spec004 => include_str!("../fixtures/remote-spec-004.sql"),
        }
    }

    /// The tenant id of the `n`th generated tenant (1-based) in this layout.
    pub fn tenant_id(self, n: i64) -> String {
        match self {
            Layout::Default => n.to_string(),
            Layout::DbSyncProcess | Layout::Spec004 => format!("tenant-{n}"),
        }
    }
}

/// How much remote data to generate. Every tenant gets the same shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixtureSize {
    pub tenants: i64,
    pub meters_per_tenant: i64,
    /// Elements per meter (rows per meter id in the default layout's composite key).
    pub elements_per_meter: i64,
    pub registers_per_tenant: i64,
    /// Registers associated with each device (capped at `registers_per_tenant`).
    pub registers_per_device: i64,
}

impl Default for FixtureSize {
    /// The demo's size: two tenants, 25 meters each (50 in all), 10 registers, 3 per device.
    fn default() -> Self {
        Self {
            tenants: 2,
            meters_per_tenant: 25,
            elements_per_meter: 1,
            registers_per_tenant: 10,
            registers_per_device: 3,
        }
    }
}

/// Creates the remote schema and fills it.
pub async fn load_remote(
    client: &impl GenericClient,
    layout: Layout,
    size: FixtureSize,
) -> Result<(), PgError> {
    client
        .batch_execute(layout.remote_schema())
        .await
        .map_err(|e| PgError::query(Side::Remote, "create the fixture schema", e))?;
    fill_remote(client, layout, size).await
}

/// Fills an existing remote schema.
pub async fn fill_remote(
    client: &impl GenericClient,
    layout: Layout,
    size: FixtureSize,
) -> Result<(), PgError> {
    let FixtureSize {
        tenants: t,
        meters_per_tenant: m,
        elements_per_meter: e,
        registers_per_tenant: r,
        registers_per_device: k,
    } = size;
    let steps: Vec<(&str, &str, Vec<i64>)> = match layout {
        Layout::Default => vec![
            ("tenants", DEFAULT_TENANTS, vec![t]),
            ("meters", DEFAULT_METERS, vec![t, m, e]),
            ("registers", DEFAULT_REGISTERS, vec![t, r]),
            (
                "device registers",
                DEFAULT_DEVICE_REGISTERS,
                vec![t, m, r, k.min(r)],
            ),
        ],
        Layout::DbSyncProcess => vec![
            ("tenants", PROCESS_TENANTS, vec![t]),
            ("meters", PROCESS_METERS, vec![t, m]),
        ],
        Layout::Spec004 => vec![
            ("tenants", PROCESS_TENANTS, vec![t]),
            ("meters", SPEC_004_METERS, vec![t, m]),
        ],
    };
    for (what, statement, values) in steps {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        client
            .execute(statement, &params)
            .await
            .map_err(|e| PgError::query(Side::Remote, format!("generate fixture {what}"), e))?;
    }
    Ok(())
}

const DEFAULT_TENANTS: &str = "insert into tenant (tenant_id, name, configuration, metadata, updated_at)
select t, 'Tenant ' || t, jsonb_build_object('timezone', 'UTC', 'site', t), jsonb_build_object('plan', 'standard'),
       timestamptz '2026-01-01 00:00:00+00' + t * interval '1 hour'
from generate_series(1, $1::bigint) t";

const DEFAULT_METERS: &str = "insert into meter (id, meter_element_id, tenant_id, device_id, name, type, serial_number,
    installation_date, location_id, ip, port, protocol, status, register_map, element, notes, active, created_at, updated_at)
select (t - 1) * $2::bigint + m, e, t, 100000 + (t - 1) * $2::bigint + m, 'Meter ' || t || '-' || m,
       (array['electric', 'water', 'gas'])[1 + (m % 3)::int], 'SN-' || lpad(((t - 1) * $2::bigint + m)::text, 8, '0'),
       date '2024-01-01' + (m % 365)::int, 10 + m % 7, '10.' || t || '.' || (m / 250) % 256 || '.' || (m % 250 + 1),
       502, 'modbus', 'online', jsonb_build_object('registers', jsonb_build_array(m % 10, m % 10 + 1)), 'E' || e,
       case when m % 5 = 0 then 'note for meter ' || m end, true,
       timestamptz '2026-01-01 00:00:00+00', timestamptz '2026-01-01 00:00:00+00' + m * interval '1 minute'
from generate_series(1, $1::bigint) t, generate_series(1, $2::bigint) m, generate_series(1, $3::bigint) e";

const DEFAULT_REGISTERS: &str =
    "insert into register (id, tenant_id, name, register, unit, field_name)
select (t - 1) * $2::bigint + r, t, 'Register ' || r, (40000 + r)::int,
       (array['kWh', 'kW', 'V', 'A', 'Hz'])[1 + (r % 5)::int], 'field_' || r
from generate_series(1, $1::bigint) t, generate_series(1, $2::bigint) r";

const DEFAULT_DEVICE_REGISTERS: &str = "insert into device_register (id, device_id, register_id, created_at, updated_at)
select row_number() over (order by t, m, k), 100000 + (t - 1) * $2::bigint + m, (t - 1) * $3::bigint + 1 + (m + k) % $3::bigint,
       timestamptz '2026-01-01 00:00:00+00', timestamptz '2026-01-02 00:00:00+00'
from generate_series(1, $1::bigint) t, generate_series(1, $2::bigint) m, generate_series(0, $4::bigint - 1) k";

const PROCESS_TENANTS: &str = "insert into tenant (tenant_id, name, configuration, metadata, updated_at)
select 'tenant-' || t, 'Tenant ' || t, jsonb_build_object('timezone', 'UTC'), jsonb_build_object('plan', 'standard'),
       timestamp '2026-01-01 00:00:00' + t * interval '1 hour'
from generate_series(1, $1::bigint) t";

const PROCESS_METERS: &str = "insert into meters (meter_id, tenant_id, name, location_id, meter_type, unit, configuration, updated_at)
select 'M-' || t || '-' || m, 'tenant-' || t, 'Meter ' || t || '-' || m, 'L-' || (m % 7), (array['electric', 'water', 'gas'])[1 + (m % 3)::int],
       (array['kWh', 'm3', 'm3'])[1 + (m % 3)::int], jsonb_build_object('interval_s', 60 * (1 + m % 5)),
       timestamp '2026-01-01 00:00:00' + m * interval '1 minute'
from generate_series(1, $1::bigint) t, generate_series(1, $2::bigint) m";

/// Inserts `count` unsynchronized readings into the local `meter_readings` table: meters
/// `M-0..M-{meters-1}`, one reading per meter per minute from `start_minute`, values with
/// decimals, every seventh without metadata. Deterministic for the same arguments.
pub async fn insert_local_readings(
    client: &impl GenericClient,
    count: i64,
    meters: i64,
    start_minute: i64,
) -> Result<u64, PgError> {
    client
        .execute(
            "insert into meter_readings (meter_id, timestamp, value, unit, metadata)
             select 'M-' || (i % $2::bigint), timestamp '2026-01-01 00:00:00' + ($3::bigint + i / $2::bigint) * interval '1 minute',
                    round(((i * 7919) % 1000003)::numeric / 100, 2), 'kWh',
                    case when i % 7 = 0 then null else jsonb_build_object('quality', 'good', 'seq', i) end
             from generate_series(0, $1::bigint - 1) i",
            &[&count, &meters, &start_minute],
        )
        .await
        .map_err(|e| PgError::query(Side::Local, "generate readings", e))
}

/// Inserts `count` readings stamped now (a millisecond apart, so none repeats another's
/// dedupe key) for random active local meters: the demo's live reading generator.
pub async fn insert_live_readings(client: &impl GenericClient, count: i64) -> Result<u64, PgError> {
    client
        .execute(
            "insert into meter_readings (meter_id, timestamp, value, unit, metadata)
             select coalesce((select m.id::text from meter m where m.active and i > 0 order by random() limit 1), 'M-' || i),
                    localtimestamp + i * interval '1 millisecond',
                    round((random() * 250)::numeric, 3), 'kWh',
                    jsonb_build_object('source', 'demo', 'quality', case when random() < 0.95 then 'good' else 'estimated' end)
             from generate_series(1, $1::bigint) i",
            &[&count],
        )
        .await
        .map_err(|e| PgError::query(Side::Local, "generate live readings", e))
}

/// Changes the remote configuration of tenant 1 a little (the demo's "someone edited the
/// central database"): renames a meter, and every third call adds one. Returns what it did.
pub async fn change_remote_config(
    client: &impl GenericClient,
    round: u64,
) -> Result<String, PgError> {
    let renamed = client
        .execute(
            "update meter set name = 'Meter ' || id || ' (renamed ' || to_char(now(), 'HH24:MI:SS') || ')', updated_at = now()
             where (id, meter_element_id) = (select id, meter_element_id from meter where tenant_id = 1 order by random() limit 1)",
            &[],
        )
        .await
        .map_err(|e| PgError::query(Side::Remote, "rename a meter", e))?;
    let mut done = format!("renamed {renamed} meter");
    if round.is_multiple_of(3) {
        client
            .execute(
                "insert into meter (id, meter_element_id, tenant_id, device_id, name, type, active, created_at, updated_at)
                 select coalesce(max(id), 0) + 1, 1, 1, coalesce(max(id), 0) + 1, 'Meter ' || (coalesce(max(id), 0) + 1) || ' (new)', 'electricity', true, now(), now()
                 from meter",
                &[],
            )
            .await
            .map_err(|e| PgError::query(Side::Remote, "add a meter", e))?;
        done.push_str(", added 1 meter");
    }
    Ok(done)
}

/// [`PROCESS_METERS`] without the tenant column, which 004's own `meters` lacks.
const SPEC_004_METERS: &str = "insert into meters (meter_id, name, location_id, meter_type, unit, configuration, updated_at)
select 'M-' || t || '-' || m, 'Meter ' || t || '-' || m, 'L-' || (m % 7), (array['electric', 'water', 'gas'])[1 + (m % 3)::int],
       (array['kWh', 'm3', 'm3'])[1 + (m % 3)::int], jsonb_build_object('interval_s', 60 * (1 + m % 5)),
       timestamp '2026-01-01 00:00:00' + m * interval '1 minute'
from generate_series(1, $1::bigint) t, generate_series(1, $2::bigint) m";
