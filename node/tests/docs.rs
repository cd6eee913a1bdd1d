//! The reference in `docs/` stays complete: every flag `orchestrator serve --help` lists is on
//! the configuration page, every route of the OpenAPI description is on an API page (as
//! `METHOD /path`), and every error code of the core is in the user API's code table.

use anyhow::{Context, Result, ensure};
use std::path::Path;
use std::process::Command;

fn page(name: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

/// The long flag each option line of a `--help` text starts with (`  -x, --flag <VALUE>`).
fn flags_in_help(help: &str) -> Vec<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with('-'))
        .filter_map(|line| {
            line.split([' ', ','])
                .find(|word| word.starts_with("--"))
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn every_serve_flag_is_on_the_configuration_page() -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["serve", "--help"])
        .output()?;
    ensure!(out.status.success(), "serve --help failed");
    let help = String::from_utf8(out.stdout)?;
    let flags = flags_in_help(&help);
    ensure!(
        flags.len() > 30,
        "too few flags read from --help: {flags:?}"
    );
    let page = page("configuration.md")?;
    let missing: Vec<&String> = flags
        .iter()
        .filter(|flag| !page.contains(&format!("`{flag}`")))
        .collect();
    ensure!(
        missing.is_empty(),
        "flags of `orchestrator serve --help` missing from docs/configuration.md: {missing:?}"
    );
    Ok(())
}

#[test]
fn every_openapi_route_is_on_an_api_page() -> Result<()> {
    let pages = [
        "user-api.md",
        "robot-rest.md",
        "robot-websocket.md",
        "robot-prototype.md",
    ]
    .iter()
    .map(|name| page(name))
    .collect::<Result<Vec<_>>>()?
    .join("\n");
    let spec = orchestrator_web::dashboard::openapi::spec();
    let paths = spec["paths"].as_object().context("no paths")?;
    let mut routes = Vec::new();
    for (path, methods) in paths {
        for method in methods.as_object().context("no methods")?.keys() {
            routes.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    ensure!(routes.len() > 40, "too few routes: {routes:?}");
    let missing: Vec<&String> = routes
        .iter()
        .filter(|route| !pages.contains(&format!("`{route}`")))
        .collect();
    ensure!(
        missing.is_empty(),
        "routes of the OpenAPI description missing from the API pages: {missing:?}"
    );
    Ok(())
}

#[test]
fn every_error_code_of_the_core_is_in_the_code_table() -> Result<()> {
    let page = page("user-api.md")?;
    for code in orchestrator_actors::error::code::ALL {
        ensure!(
            page.contains(&format!("| `{}` | {} |", code.name, code.status)),
            "error code {} ({}) missing from docs/user-api.md's code table",
            code.name,
            code.status
        );
    }
    Ok(())
}
