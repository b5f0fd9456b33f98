//! The environment layer: every setting as a `WORKLOAD_ISSUER_*` variable,
//! over the file and under the flags.
//!
//! The name is the prefix and the field's path in capitals, nested with `__`:
//! `WORKLOAD_ISSUER_LISTEN`, `WORKLOAD_ISSUER_LIMITS__MAX_CONNECTIONS`. An
//! entry of an array of tables is addressed by its index,
//! `WORKLOAD_ISSUER_CLUSTERS__0__ISSUER`; the next free index adds an entry.
//! The value is read as its field's kind: a string or duration as written, a
//! number, `true`/`false`, an array (`["a", "b"]`) or table in TOML; a list
//! of URLs (`STORE__ENDPOINTS`) may also be written comma-separated. A
//! variable of the prefix that names no setting, or a value that is not of
//! its field's kind, is a problem naming the variable: a typo must not fall
//! back to the default unnoticed.
//!
//! Imports nothing of the crate beyond `config`.

use std::ffi::OsStr;

use toml::de::DeValue;
use toml::{Table, Value};

use super::fields::{check_value, join, names, Field, Kind, TOP};
use super::layer::{merge, SetBy};

pub(super) const PREFIX: &str = "WORKLOAD_ISSUER_";

/// Variables of the prefix that are not settings: read by the command line,
/// the logger and the tests, and left alone here.
pub const NOT_SETTINGS: &[&str] = &[
    "WORKLOAD_ISSUER_CONFIG",
    "WORKLOAD_ISSUER_LOG",
    "WORKLOAD_ISSUER_LOG_FORMAT",
    "WORKLOAD_ISSUER_REQUIRE_INTEROP",
    "WORKLOAD_ISSUER_REQUIRE_ETCD",
];

/// One step of a variable's path: a field, or an entry of an array of tables.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Field(&'static str),
    Index(usize),
}

struct Assignment {
    var: String,
    steps: Vec<Step>,
    value: Value,
}

/// Applies the `WORKLOAD_ISSUER_*` variables of `env` onto `merged` and
/// records which variable set which path.
pub(super) fn apply<K, V>(
    env: impl IntoIterator<Item = (K, V)>,
    merged: &mut Table,
    set_by: &mut SetBy,
    problems: &mut Vec<String>,
) where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut assignments = Vec::new();
    for (name, value) in env {
        let Some(var) = name.as_ref().to_str() else {
            let lossy = name.as_ref().to_string_lossy();
            if lossy.starts_with(PREFIX) {
                problems.push(format!(
                    "{lossy}: the variable's name is not UTF-8; settings are named in ASCII"
                ));
            }
            continue;
        };
        let Some(rest) = var.strip_prefix(PREFIX) else {
            continue;
        };
        if NOT_SETTINGS.contains(&var) {
            continue;
        }
        let (steps, kind) = match resolve(rest) {
            Ok(found) => found,
            Err(why) => {
                problems.push(format!("{var}: {why}"));
                continue;
            }
        };
        let Some(text) = value.as_ref().to_str() else {
            problems.push(format!("{var}: the value is not UTF-8"));
            continue;
        };
        if let Some(value) = read(var, text, kind, &path(&steps), problems) {
            assignments.push(Assignment {
                var: var.to_owned(),
                steps,
                value,
            });
        }
    }
    // In order of the path, so an array is set before its entries, and entry
    // 2 is added after entry 1 whatever order the environment lists them in.
    assignments.sort_by(|a, b| a.steps.cmp(&b.steps));
    for pair in assignments.windows(2) {
        if pair[0].steps == pair[1].steps {
            problems.push(format!(
                "{}: {} also sets {}; keep one",
                pair[1].var,
                pair[0].var,
                path(&pair[0].steps)
            ));
        }
    }
    let mut root = Value::Table(std::mem::take(merged));
    for a in assignments {
        match assign(&mut root, &a.steps, a.value) {
            Ok(()) => set_by.push((path(&a.steps), a.var)),
            Err(why) => problems.push(format!("{}: {why}", a.var)),
        }
    }
    if let Value::Table(t) = root {
        *merged = t;
    }
}

/// The field a variable names (the part after the prefix), and its kind.
fn resolve(rest: &str) -> Result<(Vec<Step>, Kind), String> {
    let mut steps = Vec::new();
    let mut fields: &'static [Field] = TOP;
    let mut kind: Option<Kind> = None;
    for part in rest.split("__") {
        match kind {
            None | Some(Kind::Table(_)) => {
                let name = part.to_ascii_lowercase();
                let Some(field) = fields.iter().find(|f| f.name == name) else {
                    return Err(if steps.is_empty() {
                        format!(
                            "no setting is called `{name}`; the settings are {}, each \
                             {PREFIX}<FIELD> in capitals, nested with __ \
                             ({PREFIX}LIMITS__MAX_CONNECTIONS)",
                            names(TOP)
                        )
                    } else {
                        format!(
                            "{} has no field `{name}`; its fields are: {}",
                            path(&steps),
                            names(fields)
                        )
                    });
                };
                steps.push(Step::Field(field.name));
                if let Kind::Table(sub) = field.kind {
                    fields = sub;
                }
                kind = Some(field.kind);
            }
            Some(Kind::Tables(sub)) => {
                let index = Some(part)
                    .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|p| p.parse::<usize>().ok());
                let Some(index) = index else {
                    return Err(format!(
                        "{} is an array of tables: address an entry by its index, as \
                         {PREFIX}{}__0__{}",
                        path(&steps),
                        upper(&steps),
                        sub.first().map_or("", |f| f.name).to_ascii_uppercase()
                    ));
                };
                steps.push(Step::Index(index));
                fields = sub;
                kind = Some(Kind::Table(sub));
            }
            Some(other) => {
                return Err(format!(
                    "{} is {} and has no fields; set it as {PREFIX}{}",
                    path(&steps),
                    other.describe(),
                    upper(&steps)
                ))
            }
        }
    }
    match kind {
        Some(kind) => Ok((steps, kind)),
        None => Err("names no setting".into()),
    }
}

/// A variable's value as its field's kind: strings (and durations) as
/// written, anything else as a TOML value checked against the field.
fn read(
    var: &str,
    text: &str,
    kind: Kind,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<Value> {
    let how = match kind {
        Kind::Str | Kind::Duration => return Some(Value::String(text.to_owned())),
        Kind::List if !text.trim_start().starts_with('[') => return Some(comma_separated(text)),
        Kind::Integer => "write a whole number, such as 10000",
        Kind::Bool => "write true or false",
        Kind::Strings => "write a TOML array, such as [\"a\", \"b\"]",
        Kind::List => {
            "write a TOML array, such as [\"a\", \"b\"], or the entries separated by commas"
        }
        Kind::Table(_) => "write a TOML inline table, such as { field = \"value\" }",
        Kind::Tables(_) => "write a TOML array of inline tables, such as [{ field = \"value\" }]",
    };
    let refuse = |problems: &mut Vec<String>| {
        problems.push(format!("{var}: {text:?} is not {}; {how}", kind.describe()));
        None
    };
    let Ok(parsed) = DeValue::parse(text.trim()) else {
        return refuse(problems);
    };
    if matches!(kind, Kind::Integer | Kind::Bool) {
        let fits = matches!(
            (kind, parsed.get_ref()),
            (Kind::Integer, DeValue::Integer(_)) | (Kind::Bool, DeValue::Boolean(_))
        );
        if !fits {
            return refuse(problems);
        }
    }
    let mut found = Vec::new();
    check_value(&parsed, kind, path, &|_| format!("{var}: "), &mut found);
    if !found.is_empty() {
        problems.extend(found.into_iter().map(|(_, p)| p));
        return None;
    }
    match text.trim().parse::<Value>() {
        Ok(value) => Some(value),
        Err(_) => refuse(problems),
    }
}

/// A list written `a,b` (spaces around an entry trimmed); nothing at all is
/// an empty list.
fn comma_separated(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    Value::Array(
        text.split(',')
            .map(|entry| Value::String(entry.trim().to_owned()))
            .collect(),
    )
}

/// Sets the value at `steps`: a table is merged into the one it replaces
/// field by field, anything else replaces what was there.
fn assign(root: &mut Value, steps: &[Step], value: Value) -> Result<(), String> {
    let mut at = root;
    for (depth, step) in steps.iter().enumerate() {
        let here = &steps[..depth];
        let last = depth + 1 == steps.len();
        at = match step {
            Step::Field(name) => {
                let Some(table) = at.as_table_mut() else {
                    return Err(format!("{} is not a table in the layers below", path(here)));
                };
                if last {
                    match value {
                        Value::Table(new) if table.get(*name).is_some_and(Value::is_table) => {
                            if let Some(Value::Table(old)) = table.get_mut(*name) {
                                merge(old, new);
                            }
                        }
                        value => {
                            table.insert((*name).to_owned(), value);
                        }
                    }
                    return Ok(());
                }
                // What holds the next step: an array for an index.
                let empty = match steps.get(depth + 1) {
                    Some(Step::Index(_)) => Value::Array(Vec::new()),
                    _ => Value::Table(Table::new()),
                };
                table.entry(*name).or_insert(empty)
            }
            Step::Index(index) => {
                let at_path = path(here);
                let Some(array) = at.as_array_mut() else {
                    return Err(format!("{at_path} is not an array in the layers below"));
                };
                let len = array.len();
                if *index > len {
                    return Err(format!(
                        "{at_path} has {len} entries before this variable, so index {index} \
                         would leave a gap; number the entries from 0 without gaps (the next \
                         is {len})"
                    ));
                }
                if *index == len {
                    array.push(Value::Table(Table::new()));
                }
                let Some(entry) = array.get_mut(*index) else {
                    return Err(format!("{at_path}[{index}] cannot be set"));
                };
                if last {
                    match (entry, value) {
                        (Value::Table(old), Value::Table(new)) => merge(old, new),
                        (entry, value) => *entry = value,
                    }
                    return Ok(());
                }
                entry
            }
        };
    }
    Err("names no setting".into())
}

/// A path as problems name it: `clusters[0].issuer`.
fn path(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Field(name) => out = join(&out, name),
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A path as a variable spells it, without the prefix: `CLUSTERS__0__ISSUER`.
fn upper(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| match s {
            Step::Field(name) => name.to_ascii_uppercase(),
            Step::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join("__")
}
