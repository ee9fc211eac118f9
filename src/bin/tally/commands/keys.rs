//! `tally key`: bearer keys for `tally serve`'s [[serve.keys]].

use tally::serve::auth;

use crate::args::KeyCommand;

pub fn run(command: KeyCommand) -> anyhow::Result<u8> {
    match command {
        KeyCommand::New { tenant, admin: _, name } => new(tenant.as_deref(), name.as_deref()),
        KeyCommand::Hash => hash(),
    }
}

/// `tally key new`: a tenant's key with `tenant`, else (clap requires `--admin` then) an admin key.
fn new(tenant: Option<&str>, name: Option<&str>) -> anyhow::Result<u8> {
    let key = auth::new_key()?;
    let who = match tenant {
        Some(t) => format!("tenant = {}", toml_string(t)),
        None => "admin = true".to_string(),
    };
    let label = name.map(|n| format!("name = {}\n", toml_string(n))).unwrap_or_default();
    println!(
        "key: {key}\n\n# tally.toml (the key itself is not stored):\n[[serve.keys]]\nhash = \"{}\"\n{who}\n{label}",
        auth::hash_text(&key)
    );
    Ok(0)
}

/// `tally key hash`: the hash of the key on stdin's first line.
fn hash() -> anyhow::Result<u8> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let key = line.trim();
    anyhow::ensure!(!key.is_empty(), "no key on stdin");
    println!("{}", auth::hash_text(key));
    Ok(0)
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
