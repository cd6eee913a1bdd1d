//! Tools that sit beside the node: `robot-sim`, a fleet of simulated robots speaking any of the
//! three robot APIs, and `bench`, which runs the benchmark scenarios against release builds and
//! writes `BENCHMARKS.md`.

pub mod sim;
