//! Vault items: what a user stores (every field of which is encrypted as one body), and the
//! three-way, field-by-field merge that keeps both sides of a concurrent edit.

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// How many replaced values an item keeps in its history; older ones are dropped first.
pub const HISTORY_LIMIT: usize = 64;

/// One entry in the vault. Every field, the name included, is sealed into the item's body; the
/// server sees an opaque id, a version and a padded ciphertext.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
#[serde(default)]
pub struct Item {
    /// What the user calls it ("GitHub").
    pub name: String,
    /// Login name or e-mail address.
    pub username: String,
    /// The secret.
    pub password: String,
    /// Sites the login belongs to.
    pub urls: Vec<String>,
    /// Free text.
    pub notes: String,
    /// TOTP secret: base32 or an `otpauth://` URI; empty when none.
    pub totp: String,
    /// Folder path ("Work/Cloud"); empty for none.
    pub folder: String,
    /// Extra named fields.
    pub fields: Vec<Field>,
    /// Marked as a favourite.
    pub favorite: bool,
    /// Values this item had before an edit or a merge replaced them, newest last.
    pub history: Vec<HistoryEntry>,
    /// Unix time (seconds) of the last change made on a device.
    pub modified: i64,
}

/// A named extra field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
#[serde(default)]
pub struct Field {
    /// Field name, unique within the item.
    pub name: String,
    /// Field value.
    pub value: String,
    /// Shown masked, like a password.
    pub hidden: bool,
}

/// A value that was replaced, kept so that no edit is ever lost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Zeroize)]
#[serde(default)]
pub struct HistoryEntry {
    /// Which field (`password`, `notes`, `field:NAME`, …).
    pub field: String,
    /// The value it had.
    pub value: String,
    /// Unix time (seconds) when it was replaced.
    pub replaced: i64,
}

/// The names of the item's single-valued text fields, in a fixed order.
const TEXT_FIELDS: [&str; 6] = ["name", "username", "password", "notes", "totp", "folder"];

impl Item {
    fn text(&self, field: &str) -> &str {
        match field {
            "name" => &self.name,
            "username" => &self.username,
            "password" => &self.password,
            "notes" => &self.notes,
            "totp" => &self.totp,
            "folder" => &self.folder,
            _ => "",
        }
    }

    fn text_mut(&mut self, field: &str) -> Option<&mut String> {
        match field {
            "name" => Some(&mut self.name),
            "username" => Some(&mut self.username),
            "password" => Some(&mut self.password),
            "notes" => Some(&mut self.notes),
            "totp" => Some(&mut self.totp),
            "folder" => Some(&mut self.folder),
            _ => None,
        }
    }

    /// Sets a text field by name (`name`, `username`, `password`, `notes`, `totp`, `folder`),
    /// keeping a changed password, TOTP secret or note in the history. Returns false for an
    /// unknown field name.
    pub fn set_text(&mut self, field: &str, value: &str, now: i64) -> bool {
        let Some(slot) = self.text_mut(field) else {
            return false;
        };
        if slot == value {
            return true;
        }
        let old = std::mem::replace(slot, value.to_owned());
        if matches!(field, "password" | "totp" | "notes") && !old.is_empty() {
            self.remember(field, old, now);
        }
        self.modified = now;
        true
    }

    /// Sets (or adds) a custom field, keeping its old value in the history.
    pub fn set_field(&mut self, name: &str, value: &str, hidden: bool, now: i64) {
        if let Some(f) = self.fields.iter_mut().find(|f| f.name == name) {
            if f.value != value {
                let old = std::mem::replace(&mut f.value, value.to_owned());
                f.hidden = hidden;
                self.remember(&format!("field:{name}"), old, now);
            }
        } else {
            self.fields.push(Field {
                name: name.to_owned(),
                value: value.to_owned(),
                hidden,
            });
        }
        self.modified = now;
    }

    fn remember(&mut self, field: &str, value: String, now: i64) {
        self.history.push(HistoryEntry {
            field: field.to_owned(),
            value,
            replaced: now,
        });
        trim_history(&mut self.history);
    }

    /// Whether `query` (lower case) appears in the name, username, URLs or folder.
    pub fn matches(&self, query: &str) -> bool {
        let q = query.to_lowercase();
        self.name.to_lowercase().contains(&q)
            || self.username.to_lowercase().contains(&q)
            || self.folder.to_lowercase().contains(&q)
            || self.urls.iter().any(|u| u.to_lowercase().contains(&q))
    }
}

fn trim_history(history: &mut Vec<HistoryEntry>) {
    if history.len() > HISTORY_LIMIT {
        let excess = history.len() - HISTORY_LIMIT;
        history.drain(..excess);
    }
}

/// Merges two concurrent edits of one item, field by field, against the version both started
/// from. A field changed on one side only takes that change; a field changed differently on
/// both takes `ours` (the later writer) and keeps `theirs` in the history. URLs and custom
/// fields merge as sets: additions from both sides survive, a removal survives unless the
/// other side changed that entry. Histories are united.
pub fn merge(base: &Item, ours: &Item, theirs: &Item, now: i64) -> Item {
    let mut out = theirs.clone();
    let mut lost = Vec::new();
    for field in TEXT_FIELDS {
        let (b, o, t) = (base.text(field), ours.text(field), theirs.text(field));
        if o == t || o == b {
            continue;
        }
        if t != b && !t.is_empty() {
            lost.push(HistoryEntry {
                field: field.to_owned(),
                value: t.to_owned(),
                replaced: now,
            });
        }
        if let Some(slot) = out.text_mut(field) {
            *slot = o.to_owned();
        }
    }
    if ours.favorite != base.favorite {
        out.favorite = ours.favorite;
    }
    out.urls = merge_set(&base.urls, &ours.urls, &theirs.urls);
    out.fields = merge_fields(base, ours, theirs, now, &mut lost);

    let mut history = theirs.history.clone();
    for h in ours.history.iter().chain(lost.iter()) {
        if !history.contains(h) {
            history.push(h.clone());
        }
    }
    history.sort_by_key(|h| h.replaced);
    trim_history(&mut history);
    out.history = history;
    out.modified = now.max(ours.modified).max(theirs.modified);
    out
}

fn merge_set(base: &[String], ours: &[String], theirs: &[String]) -> Vec<String> {
    let mut out: Vec<String> = theirs
        .iter()
        .filter(|t| ours.contains(t) || !base.contains(t))
        .cloned()
        .collect();
    for o in ours {
        if !base.contains(o) && !out.contains(o) {
            out.push(o.clone());
        }
    }
    out
}

fn merge_fields(
    base: &Item,
    ours: &Item,
    theirs: &Item,
    now: i64,
    lost: &mut Vec<HistoryEntry>,
) -> Vec<Field> {
    let find = |item: &Item, name: &str| item.fields.iter().find(|f| f.name == name).cloned();
    let mut names: Vec<String> = Vec::new();
    for f in theirs.fields.iter().chain(&ours.fields).chain(&base.fields) {
        if !names.contains(&f.name) {
            names.push(f.name.clone());
        }
    }
    let mut out = Vec::new();
    for name in names {
        let (b, o, t) = (find(base, &name), find(ours, &name), find(theirs, &name));
        let pick = if o == t || o == b {
            t
        } else if t == b {
            o
        } else {
            // Both changed it: ours wins; a value of theirs that differs goes to history.
            if let Some(t) = &t {
                lost.push(HistoryEntry {
                    field: format!("field:{name}"),
                    value: t.value.clone(),
                    replaced: now,
                });
            }
            o.or(t)
        };
        out.extend(pick);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, password: &str) -> Item {
        Item {
            name: name.into(),
            password: password.into(),
            username: "alice".into(),
            urls: vec!["https://a.example".into()],
            ..Item::default()
        }
    }

    #[test]
    fn edits_of_different_fields_both_survive() {
        let base = item("Mail", "one");
        let mut ours = base.clone();
        ours.set_text("username", "alice@example.org", 10);
        let mut theirs = base.clone();
        theirs.set_text("password", "two", 11);
        let m = merge(&base, &ours, &theirs, 12);
        assert_eq!(m.username, "alice@example.org");
        assert_eq!(m.password, "two");
        // The password edit on their side recorded "one" in its history; it is kept.
        assert!(m.history.iter().any(|h| h.value == "one"));
    }

    #[test]
    fn a_field_changed_on_both_sides_keeps_the_loser_in_history() {
        let base = item("Mail", "one");
        let mut ours = base.clone();
        ours.set_text("password", "ours", 10);
        let mut theirs = base.clone();
        theirs.set_text("password", "theirs", 11);
        let m = merge(&base, &ours, &theirs, 12);
        assert_eq!(m.password, "ours");
        assert!(
            m.history
                .iter()
                .any(|h| h.field == "password" && h.value == "theirs")
        );
        assert!(m.history.iter().any(|h| h.value == "one"));
    }

    #[test]
    fn url_and_field_sets_merge() {
        let mut base = item("Mail", "p");
        base.urls.push("https://old.example".into());
        let mut ours = base.clone();
        ours.urls.retain(|u| u != "https://old.example");
        ours.urls.push("https://ours.example".into());
        ours.set_field("pin", "1234", true, 5);
        let mut theirs = base.clone();
        theirs.urls.push("https://theirs.example".into());
        theirs.set_field("recovery", "abcd", true, 6);
        let m = merge(&base, &ours, &theirs, 7);
        assert_eq!(
            m.urls,
            vec![
                "https://a.example".to_owned(),
                "https://theirs.example".to_owned(),
                "https://ours.example".to_owned()
            ]
        );
        let names: Vec<&str> = m.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["recovery", "pin"]);
    }

    #[test]
    fn history_is_bounded() {
        let mut it = item("x", "0");
        for i in 1..200 {
            it.set_text("password", &i.to_string(), i);
        }
        assert_eq!(it.history.len(), HISTORY_LIMIT);
        assert_eq!(it.history.last().unwrap().value, "198");
    }
}
