//! Tables, statistics and figures, drawn from the CSVs and records runs leave behind: a grid's
//! table laid out like the paper's ([`table`]), which differences are real ([`paired`]),
//! titles that say what ran ([`titles`]) and every figure ([`plots`]). Nothing here trains or
//! runs a grid: it reads `config` types and files only, so any results folder can be
//! re-reported (`dka plots`).
pub mod paired;
pub mod plots;
pub mod table;
pub mod titles;
