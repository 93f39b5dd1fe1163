-- Least privilege for meter-sync agents on the central (remote) database.
--
-- Run once per central database as the owner of its tables (psql -d <central db> -f
-- deploy/remote-grants.sql), then give each role a password:
--   alter role meter_sync_agent password '...';
-- and set POSTGRES_CLIENT_USER / POSTGRES_CLIENT_PASSWORD of each site accordingly.
-- Re-running it is harmless. Adjust the table names if your profile mirrors other tables.
--
-- meter_sync_agent: a site that uploads readings and mirrors configuration.
--   SELECT on the configuration tables, SELECT and INSERT on the readings table (SELECT for the
--   dedupe check), the readings id sequence for its default, TEMPORARY for the upload stage.
-- meter_sync_reader: a download-only site (UPLOAD_ENABLED=false): SELECT only, nothing else.

do $$
begin
    if not exists (select from pg_roles where rolname = 'meter_sync_agent') then
        create role meter_sync_agent login;
    end if;
    if not exists (select from pg_roles where rolname = 'meter_sync_reader') then
        create role meter_sync_reader login;
    end if;
    execute format('grant connect, temporary on database %I to meter_sync_agent', current_database());
    execute format('grant connect on database %I to meter_sync_reader', current_database());
    -- PostgreSQL grants TEMPORARY to PUBLIC by default; to take it from the reader too, revoke
    -- it from PUBLIC (a decision for the whole database, so not done here):
    -- execute format('revoke temporary on database %I from public', current_database());
end
$$;

grant usage on schema public to meter_sync_agent, meter_sync_reader;
grant select on tenant, meter, register, device_register to meter_sync_agent, meter_sync_reader;
grant select, insert on meter_readings to meter_sync_agent;
grant usage on sequence meter_readings_id_seq to meter_sync_agent;
