//! What can be checked of the deployment files without a Docker engine: compose and the
//! Dockerfile only set variables the binary reads, the image runs unprivileged with a health
//! check, every path the Dockerfile copies exists, and the README documents every flag.

use std::collections::BTreeSet;
use std::path::Path;

use clap::CommandFactory;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn serve_env_vars() -> BTreeSet<String> {
    let cli = sw2s::cli::Cli::command();
    let serve = cli.find_subcommand("serve").expect("serve subcommand");
    serve
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().to_string()))
        .collect()
}

#[test]
fn compose_sets_only_variables_that_serve_reads() {
    let text = std::fs::read_to_string(root().join("docker/compose.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let env = doc["services"]["sw2s"]["environment"]
        .as_mapping()
        .expect("sw2s environment");
    let known = serve_env_vars();
    let set: Vec<String> = env
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert!(
        set.iter().any(|k| k == "SW2S_DATABASE_URL"),
        "compose must point sw2s at PostgreSQL"
    );
    for key in &set {
        assert!(
            known.contains(key),
            "compose sets {key}, which `sw2s serve` does not read; known: {known:?}"
        );
    }
    let url = env[&serde_yaml::Value::from("SW2S_DATABASE_URL")]
        .as_str()
        .unwrap();
    assert!(
        url.starts_with("postgres://") && url.contains("@postgres:"),
        "{url}"
    );
    let pg = &doc["services"]["postgres"];
    assert!(pg["healthcheck"].is_mapping() && pg["volumes"].is_sequence());
    assert_eq!(
        doc["services"]["sw2s"]["depends_on"]["postgres"]["condition"],
        "service_healthy"
    );
    assert!(doc["services"]["sw2s"]["healthcheck"].is_mapping());
}

#[test]
fn dockerfile_is_multistage_unprivileged_and_copies_what_exists() {
    let text = std::fs::read_to_string(root().join("docker/Dockerfile")).unwrap();
    assert!(
        text.matches("\nFROM ").count() + usize::from(text.starts_with("FROM ")) >= 2,
        "multi-stage"
    );
    let user = text
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("USER");
    assert!(
        !user.contains("root") && !user.trim().ends_with(" 0"),
        "{user}"
    );
    assert!(text.contains("HEALTHCHECK"));
    let known = serve_env_vars();
    let mut in_env = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("ENV ") {
            in_env = true;
        }
        if in_env {
            for token in line.trim_start_matches("ENV ").split_whitespace() {
                if let Some((key, _)) = token.split_once('=') {
                    assert!(
                        known.contains(key),
                        "Dockerfile sets {key}, unknown to `sw2s serve`"
                    );
                }
            }
            in_env = line.ends_with('\\');
        }
    }
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(
                root().join(src).exists(),
                "Dockerfile copies {src}, which does not exist"
            );
        }
    }
}

#[test]
fn readme_documents_every_serve_flag() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let documented: BTreeSet<String> = readme
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .filter_map(|l| l.split('|').nth(2))
        .map(|c| c.trim().trim_matches('`').to_string())
        .collect();
    assert_eq!(
        documented,
        serve_env_vars(),
        "README's configuration table and `sw2s serve` disagree"
    );
}

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(
        readme.contains("```sh\ncargo test\n```"),
        "README's second command"
    );
    assert!(
        ci.lines().any(|l| l.trim() == "cargo test"),
        ".ci/run must run the README's test command"
    );
}
