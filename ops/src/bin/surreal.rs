//! The official SurrealDB server, built from the `surrealdb-server` crate at the SDK's exact
//! version, for nodes that share one store (`surreal start --user root --pass root
//! --bind 127.0.0.1:8100 surrealkv://PATH`, the same command line as the upstream binary).
#![recursion_limit = "512"]

fn main() -> std::process::ExitCode {
    surrealdb_server::init(surrealdb_server::core::CommunityComposer())
}
