//! Running an experiment: its grid of runs resolved to ids ([`resolve`], [`identity`]), run
//! resumably by one or many processes on one folder ([`runner`], [`runs_csv`]), written up
//! ([`outputs`]), estimated before it runs ([`plan`], [`estimate`]) or handed to Slurm
//! ([`slurm`]) or to worker processes on this machine ([`workers`]); a grid whose epochs grew continues its finished runs ([`continuation`]).
//! [`experiment::run_experiment`] is the whole of `dka grid` as one call.
pub mod continuation;
pub mod estimate;
pub mod experiment;
pub mod identity;
pub mod outputs;
pub mod plan;
pub mod resolve;
pub mod runner;
pub mod runs_csv;
pub mod slurm;
pub mod workers;
