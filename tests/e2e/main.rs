//! End-to-end tests: the real `bnsweep` and `bnsweep-worker` binaries, real sockets, results
//! read back by pyarrow, pandas, polars and DuckDB.

mod demo;
mod live;
mod protocol;
mod run_sweep;
mod serve_and_worker;
mod server;
mod slurm;
mod validate;
