//! The projection conformance suite: every case runs on both read-model
//! stores, SQLite (module `sqlite`) and PostgreSQL (module `postgres`, in
//! a schema of its own in `SPOOL_TEST_POSTGRES`, which `./scripts/test`
//! sets; without it those tests fail, they are never skipped).
//!
//! A case is an `async fn(Kind)` of one of the modules below, grouped by
//! concept; list every case in the `conformance_suite!` call at the end.

#[path = "../support/mod.rs"]
mod support;

mod partitions;
mod read_models;
mod rebuild;
mod runner;
mod usage;

support::conformance_suite!(
    read_models::event_counts_are_per_tenant_type_and_minute_and_filter_by_time_and_type,
    read_models::typed_queries_answer_before_anything_is_built,
    read_models::the_auth_model_folds_tenants_keys_and_revocations,
    read_models::the_auth_model_keeps_rolled_secrets_until_their_stated_end,
    rebuild::old_tables_serve_while_a_rebuild_fills_shadow_tables_then_swap,
    rebuild::an_interrupted_build_resumes_from_its_own_checkpoint,
    rebuild::rebuilding_an_empty_log_swaps_in_empty_tables,
    runner::a_restarted_runner_neither_skips_nor_double_counts,
    runner::the_runner_follows_a_sqlite_log_as_it_grows,
    runner::a_version_bump_rebuilds_in_shadow_tables_and_swaps_on_start,
    runner::a_failing_projection_stops_at_the_event_and_names_its_position,
    runner::stored_status_reports_lag_without_a_runner,
    runner::views_reopen_with_their_checkpoints,
    runner::batches_larger_than_the_logs_read_window_stay_consecutive,
    runner::an_interrupted_rebuild_of_the_serving_version_is_dropped_on_start,
    runner::a_projection_reads_only_its_event_types_and_its_checkpoint_passes_the_rest,
    partitions::the_live_runner_on_four_partitions_builds_what_a_rebuild_builds,
    partitions::a_restarted_runner_resumes_every_partition_from_its_own_checkpoint,
    partitions::status_shows_cursors_and_lag_summed_over_partitions,
    partitions::rebuilds_and_version_bumps_cover_every_partition,
    partitions::runners_owning_disjoint_partitions_build_the_rows_together,
    partitions::a_batch_is_refused_when_its_partitions_checkpoint_moved_under_it,
    usage::usage_counts_and_percentiles_match_exact_values_for_every_grouping,
    usage::usage_rows_carry_livemode_and_the_documented_sql_gives_the_percentiles,
    usage::usage_on_four_partitions_in_small_batches_equals_a_rebuild_in_one,
    usage::a_usage_query_racing_the_live_projection_never_fails,
);
