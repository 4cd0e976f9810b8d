//! The operators' config file: `tickwire serve --config tickwire.toml`.
//!
//! Every long flag of the subcommand is a key of the file, spelled as the
//! flag without its `--` (`max-connections = 100000`, `pin = true`). The keys
//! are read from the clap command itself, so a flag is a key the day it is
//! added and no list here can fall behind. A value is checked by its flag's
//! own parser, then becomes that flag's default; clap's precedence then does
//! the rest: command line > environment variable > file > built-in default.
//!
//! Types: a switch (`--pin`) takes `true` or `false`; a repeatable or
//! comma-separated flag (`--allowed-origin`, `--publish`) takes an array; any
//! other flag a string or an integer, checked exactly as on the command line
//! (`listen = "0.0.0.0:8080"`, `max-feeds = 1024`). A key that is no flag, a
//! value of the wrong type or one its flag refuses stops the start with the
//! file, the line and the key. Values that cannot work together are refused
//! later by `EngineConfig::validate` ([`crate::config::ConfigError`]), as for
//! flags.
//!
//! A switch and its negation (`pin`, `no-pin`) are one setting: either on the
//! command line overrides both keys in the file, and a file setting both to
//! `true` is refused.
//!
//! Runs once on the main thread, before anything starts. Knows clap and TOML,
//! nothing of the engine.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};
use toml::{Spanned, Value};

/// The flag naming the file. A command (or subcommand) with an argument of
/// this id accepts a config file; the file cannot set it.
pub const CONFIG_FLAG: &str = "config";

/// Why a command line with `--config` was not parsed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The command line itself (clap's error, usage included).
    #[error(transparent)]
    CommandLine(#[from] clap::Error),
    /// The file could not be read.
    #[error("config file {file}: {error}")]
    Read { file: String, error: std::io::Error },
    /// Not TOML (the parser's message gives the line and column).
    #[error("config file {file}: {error}")]
    Syntax {
        file: String,
        error: toml::de::Error,
    },
    /// A key that is no flag of the command.
    #[error(
        "{file}:{line}: unknown key `{key}`: the keys are the long flags of `{command}` without their `--` (see `{command} --help`)"
    )]
    UnknownKey {
        file: String,
        line: usize,
        key: String,
        command: String,
    },
    /// A value of the wrong TOML type for its flag.
    #[error("{file}:{line}: `{key}` takes {expected}, not {found}")]
    WrongType {
        file: String,
        line: usize,
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    /// A value its flag's parser refuses.
    #[error("{file}:{line}: `{key}` = {value}: {reason}")]
    InvalidValue {
        file: String,
        line: usize,
        key: String,
        value: String,
        reason: String,
    },
    /// A switch and its negation both `true`.
    #[error("{file}:{line}: `{key}` and `{negation}` are both true")]
    Contradiction {
        file: String,
        line: usize,
        key: String,
        negation: String,
    },
}

/// `P::parse()` with the config file: a command-line error (or `--help`)
/// prints and exits as clap does; a file error is returned.
pub fn parse<P: CommandFactory + FromArgMatches>() -> Result<P, ConfigFileError> {
    match try_parse_from(std::env::args_os()) {
        Err(ConfigFileError::CommandLine(e)) => e.exit(),
        parsed => parsed,
    }
}

/// Parses `argv` (program name first) against `P`'s command; when the chosen
/// subcommand has `--config FILE`, the file's keys are the defaults of their
/// flags.
pub fn try_parse_from<P, I, T>(argv: I) -> Result<P, ConfigFileError>
where
    P: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let cmd = P::command();
    // The command line alone: where the file is, and what it may not override.
    let given = cmd.clone().try_get_matches_from(&argv)?;
    let name = cmd.get_name().to_owned();
    let cmd = with_file_defaults(cmd, &given, &name)?;
    let matches = cmd.try_get_matches_from(&argv)?;
    Ok(P::from_arg_matches(&matches)?)
}

/// `cmd` with the values of the file named by `--config` in `given` (and in
/// the subcommand chosen, recursively) as the defaults of their flags.
/// `command` is how a user types it (`tickwire serve`).
fn with_file_defaults(
    mut cmd: Command,
    given: &ArgMatches,
    command: &str,
) -> Result<Command, ConfigFileError> {
    if let Some((name, sub_given)) = given.subcommand()
        && let Some(sub) = cmd.find_subcommand(name).cloned()
    {
        let sub = with_file_defaults(sub, sub_given, &format!("{command} {name}"))?;
        cmd = cmd.mut_subcommand(name, |_| sub);
    }
    let Ok(Some(mut raw)) = given.try_get_raw(CONFIG_FLAG) else {
        return Ok(cmd);
    };
    let Some(path) = raw.next() else {
        return Ok(cmd);
    };
    let path = Path::new(path);
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ConfigFileError::Read {
        file: file.clone(),
        error,
    })?;
    for (id, values) in file_defaults(&cmd, given, command, &file, &text)? {
        cmd = cmd.mut_arg(id, |a| a.default_values(values));
    }
    Ok(cmd)
}

/// One key of the file, checked against its flag.
struct Setting {
    key: String,
    line: usize,
    id: clap::Id,
    /// As the flag would take them (a switch: `"true"` or `"false"`).
    values: Vec<String>,
    switch: bool,
}

/// The defaults (arg id, values) the file sets, in file order, less the
/// switches whose negation is on the command line.
fn file_defaults(
    cmd: &Command,
    given: &ArgMatches,
    command: &str,
    file: &str,
    text: &str,
) -> Result<Vec<(clap::Id, Vec<String>)>, ConfigFileError> {
    let table: std::collections::BTreeMap<Spanned<String>, Spanned<Value>> =
        toml::from_str(text).map_err(|error| ConfigFileError::Syntax {
            file: file.to_owned(),
            error,
        })?;
    let mut entries: Vec<_> = table.into_iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let mut settings = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let line = line_of(key.span().start);
        let key = key.into_inner();
        let Some(arg) = keys(cmd).find(|a| a.get_long() == Some(key.as_str())) else {
            return Err(ConfigFileError::UnknownKey {
                file: file.to_owned(),
                line,
                key,
                command: command.to_owned(),
            });
        };
        let values = flag_values(cmd, arg, &key, value.get_ref()).map_err(|why| match why {
            Refused::Type { expected, found } => ConfigFileError::WrongType {
                file: file.to_owned(),
                line,
                key: key.clone(),
                expected,
                found,
            },
            Refused::Value { value, reason } => ConfigFileError::InvalidValue {
                file: file.to_owned(),
                line,
                key: key.clone(),
                value,
                reason,
            },
        })?;
        settings.push(Setting {
            switch: is_switch(arg),
            id: arg.get_id().clone(),
            key,
            line,
            values,
        });
    }
    let on = |s: &Setting| s.switch && s.values == ["true"];
    let mut defaults = Vec::with_capacity(settings.len());
    for s in &settings {
        let negation = |key: &str| {
            key.strip_prefix("no-") == Some(s.key.as_str())
                || s.key.strip_prefix("no-") == Some(key)
        };
        // In file order: the first of the two is found first.
        if let Some(later) = settings.iter().find(|o| on(s) && on(o) && negation(&o.key)) {
            return Err(ConfigFileError::Contradiction {
                file: file.to_owned(),
                line: later.line,
                key: s.key.clone(),
                negation: later.key.clone(),
            });
        }
        let negated_on_command_line = s.switch
            && keys(cmd).any(|a| {
                a.get_long().is_some_and(negation)
                    && given.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine)
            });
        if !negated_on_command_line {
            defaults.push((s.id.clone(), s.values.clone()));
        }
    }
    Ok(defaults)
}

/// The arguments that are keys: the long flags, less `--config`, `--help`
/// and `--version`.
fn keys(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments().filter(|a| {
        a.get_long().is_some()
            && a.get_id() != CONFIG_FLAG
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    })
}

/// Every key of `cmd`'s file: its long flags less `--config`, `--help` and
/// `--version`.
pub fn key_names(cmd: &Command) -> Vec<String> {
    keys(cmd)
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect()
}

fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// Why a value was refused.
enum Refused {
    Type {
        expected: &'static str,
        found: &'static str,
    },
    Value {
        value: String,
        reason: String,
    },
}

/// The values `arg` gets from `value`, each checked by the flag's parser.
fn flag_values(cmd: &Command, arg: &Arg, key: &str, value: &Value) -> Result<Vec<String>, Refused> {
    const SCALAR: &str = "a string or an integer";
    let values = match (arg.get_action(), value) {
        (ArgAction::SetTrue | ArgAction::SetFalse, Value::Boolean(b)) => {
            return Ok(vec![b.to_string()]);
        }
        (ArgAction::SetTrue | ArgAction::SetFalse, other) => {
            return Err(Refused::Type {
                expected: "true or false",
                found: type_name(other),
            });
        }
        (ArgAction::Append, Value::Array(items)) => items
            .iter()
            .map(|v| scalar(v, "an array of strings or integers"))
            .collect::<Result<Vec<_>, _>>()?,
        (ArgAction::Append, other) => {
            return Err(Refused::Type {
                expected: "an array (`[\"a\", \"b\"]`; `[]` for none)",
                found: type_name(other),
            });
        }
        (_, other) => vec![scalar(other, SCALAR)?],
    };
    for v in &values {
        check(cmd, arg, key, v).map_err(|reason| Refused::Value {
            value: format!("{v:?}"),
            reason,
        })?;
    }
    Ok(values)
}

/// A string or an integer as the command line would spell it.
fn scalar(value: &Value, expected: &'static str) -> Result<String, Refused> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        other => Err(Refused::Type {
            expected,
            found: type_name(other),
        }),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table (the keys are flat: no `[section]`)",
    }
}

/// Runs `value` through the flag's own parser, as `--key=value` on a command
/// of that one flag (its relations to other flags left out).
fn check(cmd: &Command, arg: &Arg, key: &str, value: &str) -> Result<(), String> {
    let probe = Arg::new(arg.get_id().clone())
        .long(key.to_owned())
        .action(arg.get_action().clone())
        .value_parser(arg.get_value_parser().clone())
        .value_delimiter(arg.get_value_delimiter());
    Command::new(cmd.get_name().to_owned())
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from([format!("--{key}={value}")])
        .map(drop)
        .map_err(|e| match std::error::Error::source(&e) {
            Some(why) => why.to_string(),
            None => {
                let rendered = e.to_string();
                let first = rendered.lines().next().unwrap_or_default();
                first.trim_start_matches("error: ").to_owned()
            }
        })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use clap::{Parser, Subcommand};

    use super::*;

    #[derive(Parser, Debug)]
    #[command(name = "toy")]
    struct Toy {
        #[command(subcommand)]
        command: ToyCommand,
    }

    #[derive(Subcommand, Debug)]
    enum ToyCommand {
        Serve(ToyArgs),
        Other {
            #[arg(long, default_value_t = 1)]
            level: u32,
        },
    }

    #[derive(clap::Args, Debug, PartialEq)]
    struct ToyArgs {
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 10)]
        max_feeds: usize,
        #[arg(long)]
        workers: Option<usize>,
        #[arg(long, overrides_with = "no_pin")]
        pin: bool,
        #[arg(long)]
        no_pin: bool,
        #[arg(long = "allowed-origin")]
        allowed_origins: Vec<String>,
        #[arg(long, value_delimiter = ',', default_value = "book,trades")]
        channels: Vec<String>,
        #[arg(long, value_parser = parse_mode, default_value = "off")]
        auth: String,
    }

    fn parse_mode(s: &str) -> Result<String, String> {
        match s {
            "off" | "on" => Ok(s.to_owned()),
            _ => Err(format!("{s:?}: expected off or on")),
        }
    }

    /// Writes `toml` to a fresh file and parses `toy serve --config FILE args`.
    fn serve(toml: &str, args: &[&str]) -> Result<ToyArgs, ConfigFileError> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tickwire-config-file-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, toml).unwrap();
        let mut argv = vec!["toy", "serve", "--config", path.to_str().unwrap()];
        argv.extend_from_slice(args);
        let parsed = try_parse_from::<Toy, _, _>(argv);
        std::fs::remove_file(&path).unwrap();
        parsed.map(|t| match t.command {
            ToyCommand::Serve(a) => a,
            ToyCommand::Other { .. } => unreachable!("parsed serve"),
        })
    }

    fn defaults() -> ToyArgs {
        serve("", &[]).unwrap()
    }

    #[test]
    fn file_values_replace_the_defaults() {
        let a = serve(
            "listen = \"127.0.0.1:0\"\nmax-feeds = 3\nworkers = 2\npin = true\n\
             allowed-origin = [\"https://a\", \"https://b\"]\nchannels = [\"trades\"]\nauth = \"on\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(a.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!((a.max_feeds, a.workers, a.pin), (3, Some(2), true));
        assert_eq!(a.allowed_origins, ["https://a", "https://b"]);
        assert_eq!((a.channels, a.auth.as_str()), (vec!["trades".into()], "on"));
        let d = defaults();
        assert_eq!((d.max_feeds, d.workers, d.pin), (10, None, false));
        assert_eq!(d.channels, ["book", "trades"]);
    }

    #[test]
    fn the_command_line_overrides_the_file() {
        let toml = "max-feeds = 3\nworkers = 2\nallowed-origin = [\"https://a\"]\nchannels = [\"trades\"]\n";
        let a = serve(
            toml,
            &[
                "--max-feeds",
                "10",
                "--allowed-origin",
                "https://c",
                "--channels",
                "book",
            ],
        )
        .unwrap();
        // 10 is also the built-in default: the command line still wins.
        assert_eq!((a.max_feeds, a.workers), (10, Some(2)));
        assert_eq!(
            (a.allowed_origins, a.channels),
            (vec!["https://c".into()], vec!["book".into()])
        );
    }

    #[test]
    fn a_switch_and_its_negation_are_one_setting() {
        assert!(
            !serve("pin = true\n", &["--no-pin"])
                .map(|a| a.pin && !a.no_pin)
                .unwrap()
        );
        assert!(
            serve("no-pin = true\n", &["--pin"])
                .map(|a| a.pin && !a.no_pin)
                .unwrap()
        );
        assert!(
            !serve("no-pin = true\n", &[])
                .map(|a| a.pin && !a.no_pin)
                .unwrap()
        );
        assert!(
            serve("pin = true\nno-pin = false\n", &[])
                .map(|a| a.pin && !a.no_pin)
                .unwrap()
        );
        let err = serve("pin = true\n\nno-pin = true\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with(":3: `pin` and `no-pin` are both true"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err = serve("listen = \"127.0.0.1:0\"\n\nmax-feedz = 3\n", &[]).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, ConfigFileError::UnknownKey { line: 3, key, .. } if key == "max-feedz")
        );
        assert!(text.contains(":3: unknown key `max-feedz`"), "{text}");
        assert!(text.contains("`toy serve --help`"), "{text}");
        for key in ["config", "help", "max_feeds", "level"] {
            let err = serve(&format!("{key} = 1\n"), &[]).unwrap_err();
            assert!(
                matches!(&err, ConfigFileError::UnknownKey { key: k, .. } if k == key),
                "{err}"
            );
        }
        let err = serve("[serve]\nmax-feeds = 3\n", &[]).unwrap_err();
        assert!(
            matches!(&err, ConfigFileError::UnknownKey { key, line: 1, .. } if key == "serve"),
            "{err}"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused() {
        for (toml, expected, found) in [
            ("pin = \"yes\"", "true or false", "a string"),
            ("max-feeds = true", "a string or an integer", "a boolean"),
            ("max-feeds = 1.5", "a string or an integer", "a float"),
            ("max-feeds = [3]", "a string or an integer", "an array"),
            (
                "allowed-origin = \"https://a\"",
                "an array (`[\"a\", \"b\"]`; `[]` for none)",
                "a string",
            ),
            (
                "allowed-origin = [true]",
                "an array of strings or integers",
                "a boolean",
            ),
        ] {
            let err = serve(&format!("\n{toml}\n"), &[]).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(&err, ConfigFileError::WrongType { line: 2, expected: e, found: f, .. }
                    if *e == expected && *f == found),
                "{toml}: {text}"
            );
            assert!(text.contains(":2: `"), "{text}");
        }
    }

    #[test]
    fn a_value_its_flag_refuses_is_named_with_the_reason() {
        for (toml, reason) in [
            ("max-feeds = -1", "invalid digit found in string"),
            ("max-feeds = \"many\"", "invalid digit found in string"),
            ("listen = 8080", "invalid socket address syntax"),
            ("auth = \"maybe\"", "\"maybe\": expected off or on"),
        ] {
            let err = serve(toml, &[]).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(&err, ConfigFileError::InvalidValue { line: 1, .. }),
                "{text}"
            );
            assert!(text.ends_with(reason), "{toml}: {text}");
        }
    }

    #[test]
    fn a_missing_file_or_broken_toml_names_the_file() {
        let err =
            try_parse_from::<Toy, _, _>(["toy", "serve", "--config", "/nonexistent/tickwire.toml"])
                .unwrap_err();
        assert!(matches!(err, ConfigFileError::Read { .. }));
        assert!(
            err.to_string()
                .starts_with("config file /nonexistent/tickwire.toml: "),
            "{err}"
        );
        let err = serve("max-feeds = 3\nmax-feeds = 4\n", &[]).unwrap_err();
        assert!(matches!(err, ConfigFileError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = serve("listen = \n", &[]).unwrap_err();
        assert!(matches!(err, ConfigFileError::Syntax { .. }), "{err}");
    }

    #[test]
    fn without_config_nothing_changes_and_command_line_errors_stay_clap_errors() {
        let t = try_parse_from::<Toy, _, _>(["toy", "other", "--level", "4"]).unwrap();
        assert!(matches!(t.command, ToyCommand::Other { level: 4 }));
        let err = try_parse_from::<Toy, _, _>(["toy", "serve", "--max-feeds", "x"]).unwrap_err();
        assert!(matches!(err, ConfigFileError::CommandLine(_)), "{err}");
    }

    #[test]
    fn the_keys_are_the_long_flags() {
        let cmd = Toy::command();
        let serve = cmd.find_subcommand("serve").unwrap();
        assert_eq!(
            key_names(serve),
            [
                "listen",
                "max-feeds",
                "workers",
                "pin",
                "no-pin",
                "allowed-origin",
                "channels",
                "auth"
            ]
        );
    }
}
