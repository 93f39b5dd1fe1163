use super::*;
use crate::profile::Profile;

fn default_entity(name: &str) -> EntitySpec {
    Profile::builtin_default()
        .unwrap()
        .entity(name)
        .unwrap()
        .clone()
}

#[test]
fn remote_select_filters_by_tenant_literal() {
    let tenant = TenantId::parse("42").unwrap();
    let sql = remote_select(&default_entity("register"), &tenant, true, &[]);
    assert_eq!(
        sql,
        "select \"id\", \"name\", \"register\", \"unit\", \"field_name\", xmin::text::bigint as \"meter_sync_version\" from \"register\" where \"tenant_id\" = '42'"
    );
    let dr = remote_select(&default_entity("device_register"), &tenant, false, &[]);
    assert!(dr.starts_with("select \"id\", \"device_id\", \"register_id\", \"created_at\", \"updated_at\", null::bigint as \"meter_sync_version\" from (\n"), "{dr}");
    assert!(dr.contains("where r.tenant_id = '42'"), "{dr}");
}

#[test]
fn missing_rows_follow_on_missing() {
    let meter = collect_missing(&default_entity("meter"), "\"stage\"").unwrap();
    assert_eq!(
        meter,
        "create temporary table \"meter_sync_gone_meter\" on commit drop as select t.\"id\", t.\"meter_element_id\" from \"meter\" t where not exists (select 1 from \"stage\" s where s.\"id\" = t.\"id\" and s.\"meter_element_id\" = t.\"meter_element_id\") and t.\"active\" is distinct from false"
    );
    assert_eq!(
        collect_gone(&default_entity("register")).unwrap(),
        "create temporary table \"meter_sync_gone_register\" on commit drop as select t.\"id\" from \"meter_sync_diff_register\" d join \"register\" t on d.\"id\" = t.\"id\" where d.gone"
    );
    let meter = remove_gone(&default_entity("meter")).unwrap();
    assert!(
        meter.starts_with(
            "update \"meter\" t set \"active\" = false from \"meter_sync_gone_meter\" g"
        ),
        "{meter}"
    );
    let register = collect_missing(&default_entity("register"), "\"stage\"").unwrap();
    assert!(
        register.contains("from \"register\" t where not exists"),
        "{register}"
    );
    let register = remove_gone(&default_entity("register")).unwrap();
    assert!(
        register.starts_with("delete from \"register\" t using \"meter_sync_gone_register\" g"),
        "{register}"
    );
    assert_eq!(
        collect_missing(&default_entity("tenant"), "\"stage\""),
        None
    );
    assert_eq!(remove_gone(&default_entity("tenant")), None);
}

#[test]
fn update_compares_null_safely_and_reports_changed_columns() {
    let sql = update_changed(&default_entity("register")).unwrap();
    assert!(
        sql.contains("case when t.\"name\" is distinct from s.\"name\" then 'name' end"),
        "{sql}"
    );
    assert!(
        sql.contains("returning t.\"id\"::text, c.meter_sync_changed"),
        "{sql}"
    );
    assert!(
        !sql.contains("t.\"id\" is distinct"),
        "keys are not compared: {sql}"
    );
}

#[test]
fn references_become_exists_checks_on_local_tables() {
    let profile = Profile::builtin_default().unwrap();
    let dr = profile.entity("device_register").unwrap();
    let targets: Vec<Target<'_>> = profile
        .entities
        .iter()
        .map(|spec| Target {
            spec,
            deleting: spec.name.as_str() == "register",
        })
        .collect();
    let sql = skip_unreferenced(dr, &targets).unwrap();
    assert!(
        sql.contains("exists (select 1 from \"meter\" r where r.\"device_id\" = s.\"device_id\")"),
        "{sql}"
    );
    assert!(
        sql.contains(
            "exists (select 1 from \"register\" r where r.\"id\" = s.\"register_id\" and not exists (select 1 from \"meter_sync_gone_register\" g where g.\"id\" = r.\"id\"))"
        ),
        "{sql}"
    );
}
