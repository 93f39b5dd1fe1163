# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_meter_sync_global_optspecs
    string join \n config= set= h/help V/version
end

function __fish_meter_sync_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_meter_sync_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_meter_sync_using_subcommand
    set -l cmd (__fish_meter_sync_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c meter-sync -n "__fish_meter_sync_needs_command" -l config -d 'TOML configuration file with the same keys as the environment, in lower case' -r -F
complete -c meter-sync -n "__fish_meter_sync_needs_command" -l set -d 'Override one configuration key, e.g. `--set BATCH_SIZE=500` (repeatable)' -r
complete -c meter-sync -n "__fish_meter_sync_needs_command" -s h -l help -d 'Print help'
complete -c meter-sync -n "__fish_meter_sync_needs_command" -s V -l version -d 'Print version'
complete -c meter-sync -n "__fish_meter_sync_needs_command" -f -a "check" -d 'Validate the configuration and profile, print them (secrets masked) and connect to both databases; says which side failed and why'
complete -c meter-sync -n "__fish_meter_sync_needs_command" -f -a "run" -d 'Run the service: the start-up cycle, uploads every SYNC_INTERVAL_SECONDS, downloads on METER_SYNC_CRON, the HTTP API on API_HOST:API_PORT; stops gracefully on SIGTERM/SIGINT'
complete -c meter-sync -n "__fish_meter_sync_needs_command" -f -a "demo" -d 'Try the whole service on throwaway clusters with live data: starts a local and a central PostgreSQL cluster (from the installed server binaries), loads sample configuration, generates readings, and runs the service with its page on 127.0.0.1'
complete -c meter-sync -n "__fish_meter_sync_needs_command" -f -a "mcp" -d 'Serve the MCP tools over stdio (for an MCP client that starts the server itself): nothing but protocol on stdout; logs go to stderr (or LOG_FILE)'
complete -c meter-sync -n "__fish_meter_sync_needs_command" -f -a "once" -d 'Run one full cycle (upload, then every download) and exit: 0 when every part succeeded, 1 otherwise'
complete -c meter-sync -n "__fish_meter_sync_needs_command" -f -a "download" -d 'Mirror the configuration tables from the remote now (all entities, or those named), print a per-entity table (or JSON). Exit 0 when every entity succeeded, 1 otherwise'
complete -c meter-sync -n "__fish_meter_sync_needs_command" -f -a "upload" -d 'Upload queued meter readings to the remote now, draining the queue batch by batch. Exit 0 when the run ended without error (refused readings are reported), 1 otherwise'
complete -c meter-sync -n "__fish_meter_sync_needs_command" -f -a "status" -d 'Show the upload queue (size, oldest unsent reading, quarantined) and the last runs'
complete -c meter-sync -n "__fish_meter_sync_needs_command" -f -a "quarantine" -d 'List quarantined readings (refused by the remote MAX_ROW_FAILURES times) or release them'
complete -c meter-sync -n "__fish_meter_sync_needs_command" -f -a "completions" -d 'Print the shell completion script (e.g. `meter-sync completions bash > /etc/bash_completion.d/meter-sync`)'
complete -c meter-sync -n "__fish_meter_sync_needs_command" -f -a "manpages" -d 'Write the manual pages (meter-sync.1 and one per subcommand) into DIR'
complete -c meter-sync -n "__fish_meter_sync_needs_command" -f -a "migrate" -d 'Create or complete the local schema of the active profile (tables, readings queue index, sync_logs, meter_sync_log view). Idempotent; never touches the remote'
complete -c meter-sync -n "__fish_meter_sync_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand check" -l config -d 'TOML configuration file with the same keys as the environment, in lower case' -r -F
complete -c meter-sync -n "__fish_meter_sync_using_subcommand check" -l set -d 'Override one configuration key, e.g. `--set BATCH_SIZE=500` (repeatable)' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand check" -l json -d 'Print the result as JSON'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand check" -s h -l help -d 'Print help'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand run" -l config -d 'TOML configuration file with the same keys as the environment, in lower case' -r -F
complete -c meter-sync -n "__fish_meter_sync_using_subcommand run" -l set -d 'Override one configuration key, e.g. `--set BATCH_SIZE=500` (repeatable)' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand run" -s h -l help -d 'Print help'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand demo" -l port -d 'Port of the page, API and /mcp' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand demo" -l rate -d 'Readings generated per second' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand demo" -l upload-every -d 'Seconds between scheduled uploads' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand demo" -l change-every -d 'Seconds between changes of the central configuration (0: never)' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand demo" -l config -d 'TOML configuration file with the same keys as the environment, in lower case' -r -F
complete -c meter-sync -n "__fish_meter_sync_using_subcommand demo" -l set -d 'Override one configuration key, e.g. `--set BATCH_SIZE=500` (repeatable)' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand demo" -s h -l help -d 'Print help'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand mcp" -l config -d 'TOML configuration file with the same keys as the environment, in lower case' -r -F
complete -c meter-sync -n "__fish_meter_sync_using_subcommand mcp" -l set -d 'Override one configuration key, e.g. `--set BATCH_SIZE=500` (repeatable)' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand mcp" -s h -l help -d 'Print help'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand once" -l config -d 'TOML configuration file with the same keys as the environment, in lower case' -r -F
complete -c meter-sync -n "__fish_meter_sync_using_subcommand once" -l set -d 'Override one configuration key, e.g. `--set BATCH_SIZE=500` (repeatable)' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand once" -l json -d 'Print the result as JSON'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand once" -s h -l help -d 'Print help'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand download" -l entity -d 'Sync only this entity (repeatable); dependencies are not added implicitly' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand download" -l config -d 'TOML configuration file with the same keys as the environment, in lower case' -r -F
complete -c meter-sync -n "__fish_meter_sync_using_subcommand download" -l set -d 'Override one configuration key, e.g. `--set BATCH_SIZE=500` (repeatable)' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand download" -l full -d 'Compare every row\'s values rather than row versions: also repairs local edits to mirrored rows, at the cost of transferring every row'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand download" -l allow-mass-delete -d 'Apply even when an entity would lose more than MAX_DELETE_FRACTION of its rows (a remote table emptied on purpose); same as ALLOW_MASS_DELETE=true for this run'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand download" -l json -d 'Print the report as JSON'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand download" -s h -l help -d 'Print help'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand upload" -l config -d 'TOML configuration file with the same keys as the environment, in lower case' -r -F
complete -c meter-sync -n "__fish_meter_sync_using_subcommand upload" -l set -d 'Override one configuration key, e.g. `--set BATCH_SIZE=500` (repeatable)' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand upload" -l json -d 'Print the report as JSON'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand upload" -s h -l help -d 'Print help'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand status" -l config -d 'TOML configuration file with the same keys as the environment, in lower case' -r -F
complete -c meter-sync -n "__fish_meter_sync_using_subcommand status" -l set -d 'Override one configuration key, e.g. `--set BATCH_SIZE=500` (repeatable)' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand status" -l json -d 'Print the status as JSON'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand status" -s h -l help -d 'Print help'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and not __fish_seen_subcommand_from list release help" -l config -d 'TOML configuration file with the same keys as the environment, in lower case' -r -F
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and not __fish_seen_subcommand_from list release help" -l set -d 'Override one configuration key, e.g. `--set BATCH_SIZE=500` (repeatable)' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and not __fish_seen_subcommand_from list release help" -s h -l help -d 'Print help'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and not __fish_seen_subcommand_from list release help" -f -a "list" -d 'List quarantined readings with their error'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and not __fish_seen_subcommand_from list release help" -f -a "release" -d 'Put quarantined readings back in the queue (attempts reset)'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and not __fish_seen_subcommand_from list release help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and __fish_seen_subcommand_from list" -l limit -d 'At most this many' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and __fish_seen_subcommand_from list" -l config -d 'TOML configuration file with the same keys as the environment, in lower case' -r -F
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and __fish_seen_subcommand_from list" -l set -d 'Override one configuration key, e.g. `--set BATCH_SIZE=500` (repeatable)' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and __fish_seen_subcommand_from list" -l json -d 'Print as JSON'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and __fish_seen_subcommand_from release" -l id -d 'Release this reading, by its local id (repeatable; any id type: 42, a uuid, ...)' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and __fish_seen_subcommand_from release" -l config -d 'TOML configuration file with the same keys as the environment, in lower case' -r -F
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and __fish_seen_subcommand_from release" -l set -d 'Override one configuration key, e.g. `--set BATCH_SIZE=500` (repeatable)' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and __fish_seen_subcommand_from release" -l all -d 'Release every quarantined reading'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and __fish_seen_subcommand_from release" -l json -d 'Print the released ids as JSON (`{"released": N, "ids": [...]}`)'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and __fish_seen_subcommand_from release" -s h -l help -d 'Print help'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and __fish_seen_subcommand_from help" -f -a "list" -d 'List quarantined readings with their error'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and __fish_seen_subcommand_from help" -f -a "release" -d 'Put quarantined readings back in the queue (attempts reset)'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand quarantine; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand completions" -l config -d 'TOML configuration file with the same keys as the environment, in lower case' -r -F
complete -c meter-sync -n "__fish_meter_sync_using_subcommand completions" -l set -d 'Override one configuration key, e.g. `--set BATCH_SIZE=500` (repeatable)' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand completions" -s h -l help -d 'Print help'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand manpages" -l config -d 'TOML configuration file with the same keys as the environment, in lower case' -r -F
complete -c meter-sync -n "__fish_meter_sync_using_subcommand manpages" -l set -d 'Override one configuration key, e.g. `--set BATCH_SIZE=500` (repeatable)' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand manpages" -s h -l help -d 'Print help'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand migrate" -l config -d 'TOML configuration file with the same keys as the environment, in lower case' -r -F
complete -c meter-sync -n "__fish_meter_sync_using_subcommand migrate" -l set -d 'Override one configuration key, e.g. `--set BATCH_SIZE=500` (repeatable)' -r
complete -c meter-sync -n "__fish_meter_sync_using_subcommand migrate" -l json -d 'Print the result as JSON'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand migrate" -s h -l help -d 'Print help'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand help; and not __fish_seen_subcommand_from check run demo mcp once download upload status quarantine completions manpages migrate help" -f -a "check" -d 'Validate the configuration and profile, print them (secrets masked) and connect to both databases; says which side failed and why'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand help; and not __fish_seen_subcommand_from check run demo mcp once download upload status quarantine completions manpages migrate help" -f -a "run" -d 'Run the service: the start-up cycle, uploads every SYNC_INTERVAL_SECONDS, downloads on METER_SYNC_CRON, the HTTP API on API_HOST:API_PORT; stops gracefully on SIGTERM/SIGINT'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand help; and not __fish_seen_subcommand_from check run demo mcp once download upload status quarantine completions manpages migrate help" -f -a "demo" -d 'Try the whole service on throwaway clusters with live data: starts a local and a central PostgreSQL cluster (from the installed server binaries), loads sample configuration, generates readings, and runs the service with its page on 127.0.0.1'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand help; and not __fish_seen_subcommand_from check run demo mcp once download upload status quarantine completions manpages migrate help" -f -a "mcp" -d 'Serve the MCP tools over stdio (for an MCP client that starts the server itself): nothing but protocol on stdout; logs go to stderr (or LOG_FILE)'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand help; and not __fish_seen_subcommand_from check run demo mcp once download upload status quarantine completions manpages migrate help" -f -a "once" -d 'Run one full cycle (upload, then every download) and exit: 0 when every part succeeded, 1 otherwise'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand help; and not __fish_seen_subcommand_from check run demo mcp once download upload status quarantine completions manpages migrate help" -f -a "download" -d 'Mirror the configuration tables from the remote now (all entities, or those named), print a per-entity table (or JSON). Exit 0 when every entity succeeded, 1 otherwise'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand help; and not __fish_seen_subcommand_from check run demo mcp once download upload status quarantine completions manpages migrate help" -f -a "upload" -d 'Upload queued meter readings to the remote now, draining the queue batch by batch. Exit 0 when the run ended without error (refused readings are reported), 1 otherwise'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand help; and not __fish_seen_subcommand_from check run demo mcp once download upload status quarantine completions manpages migrate help" -f -a "status" -d 'Show the upload queue (size, oldest unsent reading, quarantined) and the last runs'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand help; and not __fish_seen_subcommand_from check run demo mcp once download upload status quarantine completions manpages migrate help" -f -a "quarantine" -d 'List quarantined readings (refused by the remote MAX_ROW_FAILURES times) or release them'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand help; and not __fish_seen_subcommand_from check run demo mcp once download upload status quarantine completions manpages migrate help" -f -a "completions" -d 'Print the shell completion script (e.g. `meter-sync completions bash > /etc/bash_completion.d/meter-sync`)'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand help; and not __fish_seen_subcommand_from check run demo mcp once download upload status quarantine completions manpages migrate help" -f -a "manpages" -d 'Write the manual pages (meter-sync.1 and one per subcommand) into DIR'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand help; and not __fish_seen_subcommand_from check run demo mcp once download upload status quarantine completions manpages migrate help" -f -a "migrate" -d 'Create or complete the local schema of the active profile (tables, readings queue index, sync_logs, meter_sync_log view). Idempotent; never touches the remote'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand help; and not __fish_seen_subcommand_from check run demo mcp once download upload status quarantine completions manpages migrate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand help; and __fish_seen_subcommand_from quarantine" -f -a "list" -d 'List quarantined readings with their error'
complete -c meter-sync -n "__fish_meter_sync_using_subcommand help; and __fish_seen_subcommand_from quarantine" -f -a "release" -d 'Put quarantined readings back in the queue (attempts reset)'
