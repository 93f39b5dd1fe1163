//! The type rule's pairs, checked one by one.

use super::*;

fn t(ty: Type, typmod: i32) -> ColumnType {
    ColumnType { ty, typmod }
}

fn numeric(precision: i32, scale: i32) -> ColumnType {
    t(
        Type::NUMERIC,
        ((precision << 16) | (scale & 0x7ff)) + VARHDRSZ,
    )
}

fn varchar(n: i32) -> ColumnType {
    t(Type::VARCHAR, n + VARHDRSZ)
}

fn utc() -> TimeZone {
    TimeZone::parse("UTC").unwrap()
}

#[test]
fn numeric_modifiers_decode_and_print() {
    assert_eq!(numeric(6, 2).to_string(), "numeric(6,2)");
    assert_eq!(numeric(5, -2).to_string(), "numeric(5,-2)");
    assert_eq!(varchar(10).to_string(), "varchar(10)");
    assert_eq!(t(Type::INT4_ARRAY, -1).to_string(), "int4[]");
    assert_eq!(
        t(Type::NUMERIC_ARRAY, numeric(6, 2).typmod).to_string(),
        "numeric(6,2)[]"
    );
}

#[test]
fn wider_pairs_pass_and_narrower_ones_are_refused() {
    let ok = |s: &ColumnType, d: &ColumnType| conversion(s, d, None, false).is_ok();
    assert!(ok(&numeric(6, 2), &numeric(18, 4)));
    assert!(ok(&numeric(6, 2), &t(Type::NUMERIC, -1)));
    assert!(!ok(&numeric(18, 4), &numeric(6, 2)), "rounds");
    assert!(
        !ok(&numeric(6, 2), &numeric(6, 3)),
        "one integer digit fewer"
    );
    assert!(!ok(&t(Type::NUMERIC, -1), &numeric(38, 10)));
    assert!(ok(&numeric(5, -2), &numeric(9, 0)));
    assert!(ok(&t(Type::INT4, -1), &numeric(10, 0)));
    assert!(!ok(&t(Type::INT8, -1), &numeric(18, 0)));
    assert!(!ok(&t(Type::INT4, -1), &numeric(12, -1)), "rounds to tens");
    assert!(ok(&varchar(10), &varchar(20)));
    assert!(ok(&varchar(10), &t(Type::TEXT, -1)));
    assert!(!ok(&t(Type::TEXT, -1), &varchar(10)));
    assert!(!ok(&varchar(20), &varchar(10)));
    assert!(!ok(&t(Type::BPCHAR, 9), &t(Type::BPCHAR, 14)), "pads");
    assert!(!ok(&t(Type::BPCHAR, 9), &t(Type::TEXT, -1)), "strips");
    assert!(ok(&t(Type::INT4, -1), &t(Type::INT8, -1)));
    assert!(!ok(&t(Type::INT8, -1), &t(Type::INT4, -1)));
    assert!(!ok(&t(Type::FLOAT8, -1), &t(Type::NUMERIC, -1)));
    assert!(!ok(&t(Type::NUMERIC, -1), &t(Type::FLOAT8, -1)));
    assert!(!ok(&t(Type::FLOAT4, -1), &t(Type::FLOAT8, -1)));
    assert!(ok(&t(Type::TIMESTAMP, 3), &t(Type::TIMESTAMP, -1)));
    assert!(!ok(&t(Type::TIMESTAMP, -1), &t(Type::TIMESTAMP, 3)));
    assert!(ok(&t(Type::INT4_ARRAY, -1), &t(Type::INT8_ARRAY, -1)));
    assert!(!ok(&t(Type::INT4_ARRAY, -1), &t(Type::INT4, -1)));
}

#[test]
fn conversions_name_the_target_type_or_the_zone() {
    assert_eq!(
        conversion(&t(Type::INT4, -1), &t(Type::INT8, -1), None, false),
        Ok(Conversion::Cast("int8".into()))
    );
    assert_eq!(
        conversion(
            &t(Type::INT4_ARRAY, -1),
            &t(Type::INT8_ARRAY, -1),
            None,
            false
        ),
        Ok(Conversion::Cast("_int8".into()))
    );
    assert_eq!(
        conversion(&numeric(6, 2), &numeric(18, 4), None, false),
        Ok(Conversion::None)
    );
    let naive = t(Type::TIMESTAMP, -1);
    let aware = t(Type::TIMESTAMPTZ, -1);
    assert!(conversion(&naive, &aware, None, false)
        .unwrap_err()
        .contains("time_zone"));
    assert_eq!(
        conversion(&naive, &aware, Some(&utc()), false),
        Ok(Conversion::AtTimeZone(utc()))
    );
    assert_eq!(
        conversion(&aware, &naive, Some(&utc()), false),
        Ok(Conversion::AtTimeZone(utc()))
    );
}

#[test]
fn narrowing_pairs_pass_checked_with_the_test_each_value_must_pass() {
    let checked = |s: &ColumnType, d: &ColumnType| conversion(s, d, None, true);
    let fit = |c: Result<Conversion, String>| c.unwrap().fit().cloned().unwrap().rule;
    assert_eq!(
        fit(checked(&t(Type::INT8, -1), &t(Type::INT4, -1))),
        FitRule::Range {
            min: i64::from(i32::MIN),
            max: i64::from(i32::MAX)
        }
    );
    assert_eq!(
        checked(&t(Type::INT8, -1), &t(Type::INT4, -1)).unwrap(),
        Conversion::Checked {
            cast: Some("int4".into()),
            fit: Fit {
                rule: FitRule::Range {
                    min: i64::from(i32::MIN),
                    max: i64::from(i32::MAX)
                },
                target: "int4".into()
            }
        }
    );
    assert_eq!(
        fit(checked(&t(Type::TEXT, -1), &varchar(10))),
        FitRule::Length(10)
    );
    assert_eq!(
        fit(checked(&varchar(20), &varchar(10))),
        FitRule::Length(10)
    );
    assert_eq!(
        fit(checked(&numeric(8, 2), &numeric(6, 2))),
        FitRule::Digits(4)
    );
    assert_eq!(
        fit(checked(&t(Type::INT8, -1), &numeric(12, 0))),
        FitRule::Digits(12)
    );
    // Pairs that can alter a value stay refused, checked or not.
    for (s, d) in [
        (numeric(18, 4), numeric(6, 2)),
        (t(Type::NUMERIC, -1), numeric(12, 2)),
        (t(Type::FLOAT8, -1), t(Type::INT4, -1)),
        (t(Type::TIMESTAMP, -1), t(Type::TIMESTAMP, 0)),
        (t(Type::BPCHAR, 14), t(Type::BPCHAR, 9)),
    ] {
        assert!(checked(&s, &d).is_err(), "{s} -> {d}");
    }
    // Wider pairs need no check.
    assert_eq!(
        checked(&t(Type::INT4, -1), &t(Type::INT8, -1)),
        Ok(Conversion::Cast("int8".into()))
    );
    // Unchecked, the refusal says how to allow it.
    let why = conversion(&t(Type::INT8, -1), &t(Type::INT4, -1), None, false).unwrap_err();
    assert!(
        why.starts_with(
            "int4 refuses values outside its range; allowed per value with convert = \"checked\""
        ),
        "{why}"
    );
}

#[test]
fn refusals_say_why() {
    assert_eq!(
        conversion(&numeric(18, 4), &numeric(6, 2), None, false).unwrap_err(),
        "numeric(6,2) rounds to 2 decimal place(s)"
    );
    assert_eq!(
        conversion(&varchar(20), &varchar(10), None, false).unwrap_err(),
        format!("varchar(10) is narrower than varchar(20){CHECKED_HINT}")
    );
}
