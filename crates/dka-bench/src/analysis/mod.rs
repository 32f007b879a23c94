//! What is done with a backbone or a trained run besides training it: its features on a
//! batch ([`features`]), the parameter counts of every method ([`params`]), the effective
//! receptive field of a method as it leaves a backbone ([`erf`], Figures 2 and 6), and the
//! trained run in PyTorch's formats ([`export`]).
pub mod erf;
pub mod export;
pub mod features;
pub mod inspect;
pub mod params;
pub mod predict;
