//! What the configuration's layers share: merging one TOML table over
//! another, and the record of which variable or flag set which field.
//!
//! Imports nothing; `load` and `env` both build on it.

use toml::{Table, Value};

/// Which variable or flag set which path (`limits.max_connections`), so a
/// problem with the value names where it came from.
pub(super) type SetBy = Vec<(String, String)>;

/// Merges `over` into `base`: tables field by field, anything else replaced.
pub(super) fn merge(base: &mut Table, over: Table) {
    for (key, value) in over {
        match value {
            Value::Table(over) if base.get(&key).is_some_and(Value::is_table) => {
                if let Some(Value::Table(base)) = base.get_mut(&key) {
                    merge(base, over);
                }
            }
            value => {
                base.insert(key, value);
            }
        }
    }
}
