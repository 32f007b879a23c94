//! What is done with a backbone or a trained run besides training it: its features on a
//! batch ([`features`]), the parameter counts of every method ([`params`]) and the effective
//! receptive field of a method as it leaves a backbone ([`erf`], Figures 2 and 6).
pub mod erf;
pub mod features;
pub mod params;
