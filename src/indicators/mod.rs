//! Technical indicators from Yahoo daily bars: a pure `step` core, its persisted state, and the
//! job that runs it incrementally.

pub mod step;
