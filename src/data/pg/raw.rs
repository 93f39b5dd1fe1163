//! A column value carried as its binary wire bytes, whatever its type: read from one server
//! and written to another of the same column type without decoding.

use std::ops::Range;
use std::pin::Pin;

use bytes::BytesMut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use tokio_postgres::Row;

/// A value in PostgreSQL's binary format; `None` is SQL NULL. Only meaningful between columns
/// of the same type, which the caller must have checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawValue(pub Option<Vec<u8>>);

impl<'a> FromSql<'a> for RawValue {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(Some(raw.to_vec())))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

impl ToSql for RawValue {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            Some(bytes) => {
                out.extend_from_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Writes the `columns` of `row` to a binary COPY as they came, without decoding them (the
/// column types on both sides were checked to match).
pub async fn copy_row(
    writer: Pin<&mut BinaryCopyInWriter>,
    row: &Row,
    columns: Range<usize>,
) -> Result<(), tokio_postgres::Error> {
    let values: Vec<RawValue> = columns.map(|i| row.get(i)).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    writer.write(&refs).await
}
