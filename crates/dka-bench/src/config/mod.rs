//! What a run or a grid is, as data: a run's config ([`run`]), an experiment's grid over
//! those configs ([`experiment`]), one run of a grid with its id ([`spec`]), the record a run
//! leaves when it ends ([`record`]), the metrics' names ([`metrics`]) and the figure a grid
//! gets ([`figure`]), where a run's data and weights are ([`sources`]). Types and their checks
//! only: nothing here trains, runs or draws.
pub mod experiment;
pub mod figure;
pub mod metrics;
pub mod record;
pub mod run;
pub mod sources;
pub mod spec;
