//! Profile loading and every kind of mistake it must refuse.

use super::*;

fn problems(text: &str) -> Vec<String> {
    match Profile::parse(text, "test.toml") {
        Err(ProfileError::Invalid { problems, .. }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        Err(other) => vec![other.to_string()],
        Ok(p) => panic!("accepted: {p:?}"),
    }
}

fn assert_rejected(text: &str, expected: &str) {
    let found = problems(text);
    assert!(
        found.iter().any(|p| p.contains(expected)),
        "expected {expected:?} in {found:#?}"
    );
}

const REGISTER: &str = r#"
[[entity]]
name = "register"
key = "id"
tenant_column = "tenant_id"
columns = [{ name = "id", type = "bigint", nullable = false }, { name = "name", type = "text" }]
"#;

#[test]
fn default_profile_loads_in_dependency_order() {
    let profile = Profile::builtin_default().unwrap();
    let names: Vec<&str> = profile.entities.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["tenant", "meter", "register", "device_register"]);
    let meter = profile.entity("meter").unwrap();
    assert_eq!(
        meter.key,
        [Ident::constant("id"), Ident::constant("meter_element_id")]
    );
    assert_eq!(
        meter.on_missing,
        OnMissing::Deactivate {
            column: Ident::constant("active")
        }
    );
    assert!(meter.is_tenant_scoped());
    let dr = profile.entity("device_register").unwrap();
    assert!(
        dr.is_tenant_scoped(),
        "restricted to the tenant's registers on the remote side"
    );
    assert_eq!(dr.references.len(), 2);
    assert_eq!(
        dr.depends_on,
        [Ident::constant("meter"), Ident::constant("register")]
    );
    let RemoteSource::Query(q) = &dr.remote else {
        panic!("device_register uses a query")
    };
    assert!(q
        .render(&TenantId::parse("7").unwrap())
        .contains("r.tenant_id = '7'"));
    assert_eq!(
        profile.entity("register").unwrap().on_missing,
        OnMissing::Delete
    );
    assert_eq!(
        profile.entity("tenant").unwrap().on_missing,
        OnMissing::Keep
    );
    let readings = profile.readings.as_ref().unwrap();
    assert_eq!(
        readings.dedupe_key,
        [
            Ident::constant("meter_id"),
            Ident::constant("timestamp"),
            Ident::constant("unit")
        ]
    );
    assert_eq!(readings.after_upload, AfterUpload::Delete);
    assert_eq!(
        readings.resend_check,
        crate::profile::ResendCheck::Uncertain
    );
}

#[test]
fn db_sync_process_profile_loads() {
    let profile = Profile::parse(DB_SYNC_PROCESS_PROFILE_TOML, "004").unwrap();
    let names: Vec<&str> = profile.entities.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["tenant", "meters"]);
    let meters = profile.entity("meters").unwrap();
    assert_eq!(
        meters.column("meter_id").unwrap().sql_type.as_str(),
        "varchar(255)"
    );
    assert_eq!(meters.on_missing, OnMissing::Keep);
    // As 004 writes it: every meter; the documented variant filters by the central's tenant.
    assert!(!meters.is_tenant_scoped());
    let scoped = Profile::parse(&super::db_sync_process_tenant_scoped_toml(), "004").unwrap();
    assert_eq!(
        scoped
            .entity("meters")
            .unwrap()
            .tenant_column
            .as_ref()
            .map(|c| c.as_str()),
        Some("tenant_id")
    );
}

#[test]
fn dependency_order_follows_dependencies_not_file_order() {
    let text = r#"
[[entity]]
name = "child"
key = "id"
depends_on = ["parent"]
columns = [{ name = "id", type = "bigint" }]

[[entity]]
name = "parent"
key = "id"
columns = [{ name = "id", type = "bigint" }]
"#;
    let profile = Profile::parse(text, "t").unwrap();
    let names: Vec<&str> = profile.entities.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["parent", "child"]);
}

#[test]
fn hostile_and_malformed_identifiers_are_rejected() {
    assert_rejected(
        &REGISTER.replace("name = \"register\"", "name = \"meter; drop table x\""),
        "entity `meter; drop table x` name: `meter; drop table x` is not a plain SQL identifier: character ';' at position 5",
    );
    assert_rejected(
        &REGISTER.replace("key = \"id\"", "key = \"\\\"id\\\"\""),
        "is not a plain SQL identifier",
    );
    assert_rejected(
        &REGISTER.replace("{ name = \"name\"", "{ name = \"\""),
        "`` is not a plain SQL identifier: it is empty",
    );
    assert_rejected(
        &REGISTER.replace(
            "name = \"register\"",
            "name = \"register\"\ntable = \"Register\"",
        ),
        "must start with a lower-case letter",
    );
}

#[test]
fn bad_types_and_defaults_are_rejected() {
    assert_rejected(
        &REGISTER.replace("type = \"text\"", "type = \"text; drop table x\""),
        "is not a column type",
    );
    assert_rejected(
        &REGISTER.replace("type = \"text\"", "type = \"text\", default = \"random()\""),
        "default \"random()\" is not supported: use true, false, a number, a string, one of now()",
    );
    assert_rejected(
        &REGISTER.replace(
            "type = \"text\"",
            "type = \"text\", default = \"nextval(meter_seq)\"",
        ),
        "nextval takes a quoted sequence name",
    );
}

#[test]
fn defaults_are_literals_or_known_functions_rendered_safely() {
    let text = r#"
[readings]
table = "r"
dedupe_key = ["id"]
order_by = ["id"]
columns = [
    { name = "id", type = "uuid", nullable = false, default = "gen_random_uuid()" },
    { name = "n", type = "bigint", default = "nextval('public.r_n_seq')" },
    { name = "at", type = "timestamptz", default = "CURRENT_TIMESTAMP" },
    { name = "seen", type = "timestamptz", default = "clock_timestamp()" },
    { name = "note", type = "text", default = "it's \\ (none)" },
    { name = "factor", type = "numeric", default = 1.5 },
    { name = "ok", type = "boolean", default = false },
    { name = "count", type = "integer", default = -3 },
]
"#;
    let profile = Profile::parse(text, "t").unwrap();
    let readings = profile.readings.unwrap();
    let sql: Vec<String> = readings
        .columns
        .iter()
        .map(|c| c.default.as_ref().unwrap().sql())
        .collect();
    assert_eq!(
        sql,
        [
            "gen_random_uuid()",
            "nextval('public.r_n_seq'::regclass)",
            "current_timestamp",
            "clock_timestamp()",
            "E'it''s \\\\ (none)'",
            "1.5",
            "false",
            "-3"
        ]
    );
    // The uploaded uuid key is the natural dedupe key.
    assert!(readings.id_is_uploaded());
}

#[test]
fn one_mistake_gives_one_message() {
    // A column refused for its default is still a column: the dedupe key naming it does not
    // add a second, misleading problem.
    let text = r#"
[readings]
table = "r"
dedupe_key = ["meter_element_id"]
order_by = ["id"]
columns = [
    { name = "meter_element_id", type = "bigint", default = "uuid_generate_v4()" },
]
"#;
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("default \"uuid_generate_v4()\" is not supported"),
        "{found:#?}"
    );
}

#[test]
fn nullable_dedupe_columns_renamed_columns_and_checked_conversion_are_accepted() {
    let text = r#"
[[entity]]
name = "register"
key = "id"
columns = [
    { name = "id", type = "integer", nullable = false, convert = "checked" },
    { name = "name", type = "text", remote_name = "label" },
]

[readings]
table = "r"
dedupe_key = ["meter_id", "meter_element_id"]
columns = [
    { name = "meter_id", type = "bigint", nullable = false },
    { name = "meter_element_id", type = "bigint" },
    { name = "timestamp", type = "timestamp", remote_name = "read_at" },
]
"#;
    let profile = Profile::parse(text, "t").unwrap();
    let register = profile.entity("register").unwrap();
    assert_eq!(register.column("id").unwrap().convert, Convert::Checked);
    assert_eq!(register.column("name").unwrap().remote().as_str(), "label");
    let readings = profile.readings.unwrap();
    assert_eq!(readings.columns[2].remote().as_str(), "read_at");
    assert!(!readings.id_is_uploaded());
    assert_rejected(
        &text.replace("convert = \"checked\"", "convert = \"loose\""),
        "convert `loose` is not exact or checked",
    );
}

#[test]
fn key_columns_must_be_columns() {
    assert_rejected(
        &REGISTER.replace("key = \"id\"", "key = [\"id\", \"nope\"]"),
        "entity `register`: key column `nope` is not in columns",
    );
    assert_rejected(
        &REGISTER.replace("key = \"id\"", "key = []"),
        "entity `register`: key is empty",
    );
}

#[test]
fn unknown_references_and_dependencies_are_rejected() {
    let text = format!(
        "{REGISTER}\n[[entity]]\nname = \"link\"\nkey = \"rid\"\ncolumns = [{{ name = \"rid\", type = \"bigint\" }}]\n[[entity.references]]\ncolumns = [\"rid\"]\nentity = \"ghost\"\nentity_columns = [\"id\"]\n"
    );
    assert_rejected(&text, "entity `link`: depends on unknown entity `ghost`");
    let text = format!("{REGISTER}\ndepends_on = [\"phantom\"]\n");
    assert_rejected(
        &text,
        "entity `register`: depends on unknown entity `phantom`",
    );
    let text = format!(
        "{REGISTER}\n[[entity]]\nname = \"link\"\nkey = \"rid\"\ncolumns = [{{ name = \"rid\", type = \"bigint\" }}]\n[[entity.references]]\ncolumns = [\"rid\"]\nentity = \"register\"\nentity_columns = [\"missing\"]\n"
    );
    assert_rejected(
        &text,
        "entity_columns `missing` is not a column of entity `register`",
    );
}

#[test]
fn dependency_cycles_are_rejected_with_the_cycle() {
    let text = r#"
[[entity]]
name = "a"
key = "id"
depends_on = ["b"]
columns = [{ name = "id", type = "bigint" }]

[[entity]]
name = "b"
key = "id"
depends_on = ["c"]
columns = [{ name = "id", type = "bigint" }]

[[entity]]
name = "c"
key = "id"
depends_on = ["a"]
columns = [{ name = "id", type = "bigint" }]
"#;
    assert_eq!(problems(text), ["dependency cycle: a -> b -> c -> a"]);
}

#[test]
fn duplicate_names_and_tables_are_rejected() {
    assert_rejected(
        &format!("{REGISTER}{REGISTER}"),
        "entity name `register` is used twice",
    );
    let other = REGISTER.replace(
        "name = \"register\"",
        "name = \"other\"\ntable = \"register\"",
    );
    assert_rejected(
        &format!("{REGISTER}{other}"),
        "table `register` is used by two entities",
    );
    assert_rejected(
        &REGISTER.replace("{ name = \"name\"", "{ name = \"id\""),
        "column `id` is listed twice",
    );
    assert_rejected(
        &REGISTER.replace(
            "name = \"register\"",
            "name = \"register\"\ntable = \"sync_logs\"",
        ),
        "reserved",
    );
}

#[test]
fn tenant_scoped_query_without_tenant_marker_is_rejected() {
    let text = REGISTER.replace(
        "name = \"register\"",
        "name = \"register\"\nremote_query = \"select id, name from register\"",
    );
    assert_rejected(
        &text,
        "remote_query of a tenant-scoped entity (tenant_column is set) must contain $tenant_id",
    );
    let text = REGISTER.replace(
        "name = \"register\"",
        "name = \"register\"\nremote_query = \"select 1; delete from register\"",
    );
    assert_rejected(&text, "must be a single SELECT");
    let both = REGISTER.replace(
        "name = \"register\"",
        "name = \"register\"\nremote_table = \"r\"\nremote_query = \"select 1\"",
    );
    assert_rejected(&both, "give exactly one of remote_table and remote_query");
}

#[test]
fn deactivate_needs_a_boolean_column() {
    let text = REGISTER.replace(
        "tenant_column",
        "on_missing = \"deactivate\"\ntenant_column",
    );
    assert_rejected(
        &text,
        "on_missing = \"deactivate\" needs a boolean column `active`",
    );
    assert_rejected(
        &REGISTER.replace("tenant_column", "on_missing = \"purge\"\ntenant_column"),
        "on_missing `purge` is not delete, deactivate or keep",
    );
}

#[test]
fn readings_mistakes_are_rejected() {
    let readings = r#"
[readings]
table = "meter_readings"
dedupe_key = ["meter_id", "nope"]
order_by = ["timestamp", "id"]
after_upload = "archive"
resend_check = "sometimes"
columns = [{ name = "meter_id", type = "text" }, { name = "timestamp", type = "timestamp" }, { name = "is_synchronized", type = "boolean" }]
"#;
    let found = problems(readings);
    let text = found.join("\n");
    assert!(
        text.contains("readings: resend_check `sometimes` is not uncertain or every_batch"),
        "{text}"
    );
    assert!(
        text.contains("readings: dedupe_key column `nope` is not in columns"),
        "{text}"
    );
    assert!(
        text.contains("readings: after_upload `archive` is not delete or mark"),
        "{text}"
    );
    assert!(
        text.contains("readings: column `is_synchronized` is reserved"),
        "{text}"
    );
}

#[test]
fn syntax_errors_and_unknown_fields_name_the_file() {
    let err = Profile::parse("[[entity]\nname = 1", "broken.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("profile broken.toml is not valid:"),
        "{err}"
    );
    let err = Profile::parse(
        &REGISTER.replace("tenant_column", "tenant_colum"),
        "typo.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `tenant_colum`"), "{err}");
    assert_eq!(
        problems(""),
        ["the profile describes no entity and no readings table"]
    );
}

#[test]
fn time_zones_and_the_readings_tenant_column_are_checked() {
    let readings = |columns: &str, extra: &str| {
        format!("[readings]\ntable = \"r\"\norder_by = \"id\"\ndedupe_key = \"m\"\n{extra}\ncolumns = [{{ name = \"m\", type = \"text\", nullable = false }}, {columns}]\n")
    };
    let ok = Profile::parse(
        &readings(
            r#"{ name = "at", type = "timestamp", time_zone = "UTC" }, { name = "tenant", type = "bigint" }"#,
            "tenant_column = \"tenant\"",
        ),
        "test.toml",
    )
    .unwrap();
    let spec = ok.readings.unwrap();
    assert_eq!(spec.tenant_column, Some(Ident::constant("tenant")));
    assert_eq!(
        spec.columns[1].time_zone.as_ref().map(TimeZone::as_str),
        Some("UTC")
    );
    assert_rejected(
        &readings(
            r#"{ name = "at", type = "timestamp", time_zone = "Europe/Berlin" }"#,
            "",
        ),
        "readings column 2 (`at`): time_zone `Europe/Berlin` is not a fixed-offset time zone",
    );
    assert_rejected(
        &readings(r#"{ name = "n", type = "numeric", time_zone = "UTC" }"#, ""),
        "readings column 2 (`n`): time_zone applies to timestamp and timestamptz columns only, not numeric",
    );
    assert_rejected(
        &readings(
            r#"{ name = "v", type = "text" }"#,
            "tenant_column = \"tenant\"",
        ),
        "readings: tenant_column column `tenant` is not in columns",
    );
}
