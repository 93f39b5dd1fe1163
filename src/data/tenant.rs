//! Which tenant a site syncs: `TENANT_ID` if set, else the single row of the local tenant
//! table; never "any remote tenant". Both engines and the status settle it here.

use tokio_postgres::GenericClient;

use crate::config::Side;
use crate::data::pg::PgError;
use crate::profile::{Profile, TenantId};

/// Why the tenant could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("no tenant: TENANT_ID is unset and the profile has no `tenant` entity to read it from; set TENANT_ID")]
    NoSource,
    #[error("no tenant: TENANT_ID is unset and the local table {table} is empty; set TENANT_ID for the first sync")]
    Empty { table: String },
    #[error("no tenant: TENANT_ID is unset and the local table {table} has {count} rows; set TENANT_ID to the site's tenant")]
    Several { table: String, count: i64 },
    #[error("TENANT_ID={configured} differs from the tenant already in the local table {table} ({found}); refusing to mix tenants at one site")]
    Mismatch {
        configured: String,
        table: String,
        found: String,
    },
    #[error("the local table {table} holds tenant id `{value}`, which is not a valid tenant id")]
    Invalid { table: String, value: String },
    #[error(transparent)]
    Database(#[from] PgError),
}

/// Settles the tenant for a run.
pub async fn resolve(
    local: &impl GenericClient,
    configured: Option<&TenantId>,
    profile: &Profile,
) -> Result<TenantId, TenantError> {
    let entity = profile.entity("tenant").filter(|e| e.key.len() == 1);
    let Some(entity) = entity else {
        return configured.cloned().ok_or(TenantError::NoSource);
    };
    let table = entity.table.to_string();
    let rows = match local
        .query(&crate::data::sql::select_tenant_ids(entity), &[])
        .await
    {
        Ok(rows) => rows,
        // No local tenant table yet (not migrated): only TENANT_ID can say.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Vec::new(),
        Err(e) => {
            return Err(
                PgError::query(Side::Local, format!("read the local {table} table"), e).into(),
            )
        }
    };
    let found: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    match configured {
        Some(tenant) => {
            if found.is_empty() || found.iter().any(|f| f == tenant.as_str()) {
                Ok(tenant.clone())
            } else {
                Err(TenantError::Mismatch {
                    configured: tenant.to_string(),
                    table,
                    found: found.join(", "),
                })
            }
        }
        None => match found.as_slice() {
            [] => Err(TenantError::Empty { table }),
            [one] => TenantId::parse(one).map_err(|_| TenantError::Invalid {
                table,
                value: one.clone(),
            }),
            _ => {
                let count: i64 = local
                    .query_one(&crate::data::sql::count_rows(&entity.table), &[])
                    .await
                    .map_err(|e| {
                        PgError::query(Side::Local, format!("count the local {table} table"), e)
                    })?
                    .get(0);
                Err(TenantError::Several { table, count })
            }
        },
    }
}
