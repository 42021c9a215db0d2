//! A small schema language, the same one for entities and plugin configurations.
//!
//! A schema is data: the validator, the default filler, the form-body coercion and the
//! `/schemas` endpoints all read the same field list, so a field is declared once.

use serde_json::{json, Map, Value};

use crate::typedefs;

/// What a deleted parent does to the entities that reference it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDelete {
    /// The parent cannot be deleted while referenced.
    Restrict,
    /// Referencing entities are deleted with the parent.
    Cascade,
}

/// The kind of a string field, each with its own check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrKind {
    Plain,
    Uuid,
    /// Kong's `name` typedef: letters, digits and `.-_~`.
    Name,
    /// A hostname or an IP address.
    Host,
    /// A hostname with an optional `:port`, `*` allowed as the first or last label.
    WildcardHostPort,
    /// `host[:port]`, as a target.
    HostPort,
    /// A service path: starts with `/`.
    Path,
    /// A route path: `/prefix` or `~regex`.
    RoutePath,
    /// An IP address or CIDR block.
    IpOrCidr,
    /// An IP address.
    Ip,
    /// An `http(s)://` URL.
    Url,
    /// A tag: printable, no `,` or `/`.
    Tag,
    /// A PEM certificate (chain).
    Certificate,
    /// A PEM private key.
    Key,
    /// A header name.
    HeaderName,
    /// An OAuth 2.0 redirect URI: a scheme and a host, no fragment (any scheme: apps
    /// register their own).
    RedirectUri,
}

impl StrKind {
    /// Whether a field of this kind may hold a vault reference in place of its value (Kong's
    /// `referenceable`: secrets, keys, certificates, URLs and plain strings; never a name,
    /// a host, a path or an id, which routing and references read).
    pub fn referenceable(self) -> bool {
        matches!(
            self,
            StrKind::Plain | StrKind::Url | StrKind::Certificate | StrKind::Key
        )
    }
}

/// The type of a field with its constraints.
#[derive(Clone, Debug)]
pub enum Ty {
    Str {
        kind: StrKind,
        one_of: Option<Vec<&'static str>>,
        len_min: Option<usize>,
        len_max: Option<usize>,
    },
    Int {
        min: Option<i64>,
        max: Option<i64>,
        one_of: Option<Vec<i64>>,
    },
    Num {
        min: Option<f64>,
        max: Option<f64>,
        gt: Option<f64>,
    },
    Bool,
    Array {
        elem: Box<Ty>,
        set: bool,
        len_min: Option<usize>,
        len_max: Option<usize>,
    },
    Map {
        values: Box<Ty>,
    },
    Record(Vec<Field>),
    Foreign {
        reference: &'static str,
        on_delete: OnDelete,
    },
}

/// One named field of a record.
#[derive(Clone, Debug)]
pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
    pub default: Option<Value>,
    pub unique: bool,
    /// Generated when absent (ids, timestamps, credential keys).
    pub auto: bool,
    /// Never returned by the Admin API in clear.
    pub secret: bool,
}

impl Field {
    pub fn new(name: &'static str, ty: Ty) -> Field {
        Field {
            name,
            ty,
            required: false,
            default: None,
            unique: false,
            auto: false,
            secret: false,
        }
    }
    pub fn req(mut self) -> Field {
        self.required = true;
        self
    }
    pub fn def(mut self, v: Value) -> Field {
        self.default = Some(v);
        self
    }
    pub fn unique(mut self) -> Field {
        self.unique = true;
        self
    }
    pub fn auto(mut self) -> Field {
        self.auto = true;
        self
    }
    pub fn secret(mut self) -> Field {
        self.secret = true;
        self
    }
}

// ---- constructors for types, to keep declarations short ----

pub fn str_of(kind: StrKind) -> Ty {
    Ty::Str {
        kind,
        one_of: None,
        len_min: Some(1),
        len_max: None,
    }
}
pub fn string() -> Ty {
    str_of(StrKind::Plain)
}
pub fn one_of(values: &[&'static str]) -> Ty {
    Ty::Str {
        kind: StrKind::Plain,
        one_of: Some(values.to_vec()),
        len_min: None,
        len_max: None,
    }
}
pub fn int(min: i64, max: i64) -> Ty {
    Ty::Int {
        min: Some(min),
        max: Some(max),
        one_of: None,
    }
}
/// An integer of any value.
pub fn integer() -> Ty {
    Ty::Int {
        min: None,
        max: None,
        one_of: None,
    }
}
pub fn int_one_of(values: &[i64]) -> Ty {
    Ty::Int {
        min: None,
        max: None,
        one_of: Some(values.to_vec()),
    }
}
pub fn number() -> Ty {
    Ty::Num {
        min: None,
        max: None,
        gt: None,
    }
}
/// Kong's `between = { min, max }` on a number (`typedefs.ttl`).
pub fn number_between(min: f64, max: f64) -> Ty {
    Ty::Num {
        min: Some(min),
        max: Some(max),
        gt: None,
    }
}
pub fn number_gt(gt: f64) -> Ty {
    Ty::Num {
        min: None,
        max: None,
        gt: Some(gt),
    }
}
pub fn boolean() -> Ty {
    Ty::Bool
}
pub fn array(elem: Ty) -> Ty {
    Ty::Array {
        elem: Box::new(elem),
        set: false,
        len_min: None,
        len_max: None,
    }
}
pub fn set(elem: Ty) -> Ty {
    Ty::Array {
        elem: Box::new(elem),
        set: true,
        len_min: None,
        len_max: None,
    }
}
/// A set of at least `min` elements.
pub fn set_min(elem: Ty, min: usize) -> Ty {
    Ty::Array {
        elem: Box::new(elem),
        set: true,
        len_min: Some(min),
        len_max: None,
    }
}
pub fn map(values: Ty) -> Ty {
    Ty::Map {
        values: Box::new(values),
    }
}
pub fn record(fields: Vec<Field>) -> Ty {
    Ty::Record(fields)
}
pub fn foreign(reference: &'static str, on_delete: OnDelete) -> Ty {
    Ty::Foreign {
        reference,
        on_delete,
    }
}

/// Errors found in one document, shaped like Kong's `fields` object.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FieldErrors(pub Map<String, Value>);

impl FieldErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn add(&mut self, field: &str, msg: impl Into<String>) {
        self.0.insert(field.to_string(), Value::String(msg.into()));
    }
    /// An error of a plugin's configuration record as a whole (Kong's `custom_validator`),
    /// reported as the `config` field's message.
    pub fn add_record(&mut self, msg: impl Into<String>) {
        self.0.insert("@record".into(), Value::String(msg.into()));
    }
    /// An error of a check across fields of a plugin's configuration record that Kong declares
    /// inside the record (its `entity_checks` under `config`): reported as `config.@entity`.
    pub fn add_record_entity(&mut self, msg: impl Into<String>) {
        let list = self
            .0
            .entry("@record_entity")
            .or_insert_with(|| Value::Array(vec![]));
        if let Value::Array(a) = list {
            a.push(Value::String(msg.into()));
        }
    }
    /// An error that concerns the entity as a whole (`@entity`).
    pub fn add_entity(&mut self, msg: impl Into<String>) {
        let list = self
            .0
            .entry("@entity")
            .or_insert_with(|| Value::Array(vec![]));
        if let Value::Array(a) = list {
            a.push(Value::String(msg.into()));
        }
    }
    /// Every error as `path: message`, in document order.
    pub fn flatten(&self) -> Vec<String> {
        let mut out = Vec::new();
        flatten_into(&Value::Object(self.0.clone()), "", &mut out);
        out
    }
    /// Kong's summary: `schema violation (a: b)` or `N schema violations (a: b; c: d)`.
    pub fn message(&self) -> String {
        let all = self.flatten();
        if all.len() == 1 {
            format!("schema violation ({})", all[0])
        } else {
            format!("{} schema violations ({})", all.len(), all.join("; "))
        }
    }
}

fn flatten_into(v: &Value, path: &str, out: &mut Vec<String>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "@entity" {
                    if let Value::Array(a) = v {
                        for e in a {
                            if let Value::String(s) = e {
                                out.push(if path.is_empty() {
                                    s.clone()
                                } else {
                                    format!("{path}: {s}")
                                });
                            }
                        }
                    }
                } else {
                    flatten_into(v, &join(k), out)
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                if !v.is_null() {
                    flatten_into(v, &join(&(i + 1).to_string()), out)
                }
            }
        }
        Value::String(s) => out.push(format!("{path}: {s}")),
        _ => {}
    }
}

/// Validate `input` against `fields`, returning the full record with defaults filled in.
/// Every error is collected; nothing stops at the first.
pub fn validate_record(
    fields: &[Field],
    input: &Map<String, Value>,
) -> Result<Map<String, Value>, FieldErrors> {
    let mut errs = FieldErrors::default();
    let mut out = Map::new();
    for k in input.keys() {
        if !fields.iter().any(|f| f.name == k) {
            errs.add(k, "unknown field");
        }
    }
    for f in fields {
        let v = input.get(f.name).cloned().unwrap_or(Value::Null);
        let v = if v.is_null() {
            f.default.clone().unwrap_or(Value::Null)
        } else {
            v
        };
        if v.is_null() {
            if f.required && !f.auto {
                errs.add(f.name, "required field missing");
            }
            // A record without a value takes its defaults, as Kong's nested records do.
            if let Ty::Record(sub) = &f.ty {
                if !f.required && has_defaults(sub) {
                    match validate_record(sub, &Map::new()) {
                        Ok(r) => {
                            out.insert(f.name.to_string(), Value::Object(r));
                            continue;
                        }
                        Err(_) => {
                            out.insert(f.name.to_string(), Value::Null);
                            continue;
                        }
                    }
                }
            }
            out.insert(f.name.to_string(), Value::Null);
            continue;
        }
        match check(&f.ty, v) {
            Ok(v) => {
                out.insert(f.name.to_string(), v);
            }
            Err(e) => {
                errs.0.insert(f.name.to_string(), e);
            }
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

/// Whether a record has a default somewhere, so that an absent one is filled in.
fn has_defaults(fields: &[Field]) -> bool {
    fields
        .iter()
        .any(|f| f.default.is_some() || matches!(&f.ty, Ty::Record(sub) if has_defaults(sub)))
}

/// Check one value against a type; an error is a string or a nested error object.
pub fn check(ty: &Ty, v: Value) -> Result<Value, Value> {
    let err = |m: String| Err(Value::String(m));
    match ty {
        Ty::Str {
            kind,
            one_of,
            len_min,
            len_max,
        } => {
            let Value::String(s) = v else {
                return err("expected a string".into());
            };
            // No stored text holds a NUL: PostgreSQL cannot store one, and no header, name or
            // path may carry one (Kong with PostgreSQL answers a 500 for it).
            if s.contains('\0') {
                return err("must not contain a NUL character".into());
            }
            if let Some(set) = one_of {
                if !set.contains(&s.as_str()) {
                    return err(format!("expected one of: {}", set.join(", ")));
                }
            }
            let n = s.chars().count();
            if let Some(min) = len_min {
                if n < *min {
                    return err(format!("length must be at least {min}"));
                }
            }
            if let Some(max) = len_max {
                if n > *max {
                    return err(format!("length must be at most {max}"));
                }
            }
            // A vault reference stands for a secret, read where the configuration runs: its
            // form is checked, not the secret's.
            if crate::vault::is_reference(&s) && kind.referenceable() {
                crate::vault::parse(&s).map_err(Value::String)?;
                return Ok(Value::String(s));
            }
            typedefs::check_str(*kind, &s).map_err(|e| Value::String(e.0))?;
            Ok(Value::String(s))
        }
        Ty::Int { min, max, one_of } => {
            let Some(i) = as_integer(&v) else {
                return err("expected an integer".into());
            };
            if let Some(set) = one_of {
                if !set.contains(&i) {
                    let l: Vec<String> = set.iter().map(|x| x.to_string()).collect();
                    return err(format!("expected one of: {}", l.join(", ")));
                }
            }
            if let (Some(lo), Some(hi)) = (min, max) {
                if i < *lo || i > *hi {
                    return err(format!("value should be between {lo} and {hi}"));
                }
            }
            Ok(json!(i))
        }
        Ty::Num { min, max, gt } => {
            let Some(n) = v.as_f64() else {
                return err("expected a number".into());
            };
            if let Some(g) = gt {
                if n <= *g {
                    return err(format!("value must be greater than {g}"));
                }
            }
            if let (Some(lo), Some(hi)) = (min, max) {
                if n < *lo || n > *hi {
                    return err(format!("value should be between {lo} and {hi}"));
                }
            }
            Ok(v)
        }
        Ty::Bool => match v {
            Value::Bool(_) => Ok(v),
            _ => err("expected a boolean".into()),
        },
        Ty::Array {
            elem,
            set,
            len_min,
            len_max,
        } => {
            let a = match v {
                Value::Array(a) => a,
                // Kong treats an empty object as an empty array (JSON `{}` from Lua clients).
                Value::Object(m) if m.is_empty() => vec![],
                _ => {
                    return err(format!(
                        "expected {}",
                        if *set { "a set" } else { "an array" }
                    ))
                }
            };
            if let Some(min) = len_min {
                if a.len() < *min {
                    return err(format!("length must be at least {min}"));
                }
            }
            if let Some(max) = len_max {
                if a.len() > *max {
                    return err(format!("length must be at most {max}"));
                }
            }
            let mut out = Vec::with_capacity(a.len());
            let mut errs = vec![Value::Null; a.len()];
            let mut bad = false;
            // A set keeps the first of equal elements; seen by their JSON text, so that a long
            // input costs O(n), not a comparison with every element kept.
            let mut seen = std::collections::HashSet::new();
            for (i, e) in a.into_iter().enumerate() {
                match check(elem, e) {
                    Ok(e) => {
                        if *set && !seen.insert(e.to_string()) {
                            continue;
                        }
                        out.push(e)
                    }
                    Err(e) => {
                        errs[i] = e;
                        bad = true;
                    }
                }
            }
            if bad {
                Err(Value::Array(errs))
            } else {
                Ok(Value::Array(out))
            }
        }
        Ty::Map { values } => {
            let Value::Object(m) = v else {
                return err("expected a map".into());
            };
            let mut out = Map::new();
            let mut errs = Map::new();
            for (k, e) in m {
                match check(values, e) {
                    Ok(e) => {
                        out.insert(k, e);
                    }
                    Err(e) => {
                        errs.insert(k, e);
                    }
                }
            }
            if errs.is_empty() {
                Ok(Value::Object(out))
            } else {
                Err(Value::Object(errs))
            }
        }
        Ty::Record(fields) => {
            let Value::Object(m) = v else {
                return err("expected a record".into());
            };
            validate_record(fields, &m)
                .map(Value::Object)
                .map_err(|e| Value::Object(e.0))
        }
        Ty::Foreign { .. } => {
            let Value::Object(m) = v else {
                return err("expected a record".into());
            };
            match m.get("id") {
                Some(Value::String(id)) if m.len() == 1 => {
                    typedefs::check_str(StrKind::Uuid, id).map_err(|e| json!({ "id": e.0 }))?;
                    Ok(json!({ "id": id }))
                }
                Some(_) if m.len() == 1 => Err(json!({"id": "expected a string"})),
                // Kong's `validate_primary_key`: a reference without its id.
                None => Err(json!({"id": "missing primary key"})),
                _ => err("expected a reference of the form {\"id\": \"<uuid>\"}".into()),
            }
        }
    }
}

fn as_integer(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    let f = v.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

/// Turn string leaves (from a form body or a query string) into the types the schema wants.
/// Values that cannot be converted are left as they are, for the validator to name.
pub fn coerce(fields: &[Field], input: &mut Map<String, Value>) {
    for f in fields {
        if let Some(v) = input.get_mut(f.name) {
            coerce_value(&f.ty, v);
        }
    }
}

fn coerce_value(ty: &Ty, v: &mut Value) {
    match (ty, &*v) {
        (Ty::Int { .. }, Value::String(s)) => {
            if let Ok(i) = s.trim().parse::<i64>() {
                *v = json!(i);
            }
        }
        (Ty::Num { .. }, Value::String(s)) => {
            if let Ok(i) = s.trim().parse::<i64>() {
                *v = json!(i);
            } else if let Ok(n) = s.trim().parse::<f64>() {
                if let Some(n) = serde_json::Number::from_f64(n) {
                    *v = Value::Number(n);
                }
            }
        }
        (Ty::Bool, Value::String(s)) => match s.as_str() {
            "true" => *v = Value::Bool(true),
            "false" => *v = Value::Bool(false),
            _ => {}
        },
        (Ty::Array { elem, .. }, Value::String(s)) => {
            // `paths=/a` in a form body means a one-element array; an empty value clears it.
            *v = if s.is_empty() {
                Value::Array(vec![])
            } else {
                Value::Array(vec![Value::String(s.clone())])
            };
            coerce_value(ty, v);
            let _ = elem;
        }
        (Ty::Array { elem, .. }, Value::Array(_)) => {
            if let Value::Array(a) = v {
                for e in a.iter_mut() {
                    coerce_value(elem, e);
                }
            }
        }
        (Ty::Map { values }, Value::Object(_)) => {
            if let Value::Object(m) = v {
                for e in m.values_mut() {
                    coerce_value(values, e);
                }
            }
        }
        (Ty::Record(fields), Value::Object(_)) => {
            if let Value::Object(m) = v {
                coerce(fields, m);
            }
        }
        (Ty::Foreign { .. }, Value::String(s)) => {
            *v = json!({ "id": s });
        }
        (_, Value::String(s)) if s.is_empty() => *v = Value::Null,
        _ => {}
    }
}

/// Merge a partial update into an existing document: records merge field by field,
/// anything else is replaced (Kong's PATCH semantics).
pub fn merge_patch(fields: &[Field], base: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (k, v) in patch {
        let sub = fields
            .iter()
            .find(|f| f.name == k)
            .and_then(|f| match &f.ty {
                Ty::Record(sub) => Some(sub),
                _ => None,
            });
        match (sub, base.get_mut(&k), v) {
            (Some(sub), Some(Value::Object(b)), Value::Object(p)) => merge_patch(sub, b, p),
            (_, _, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The `/schemas` representation of a field list, in Kong's shape.
pub fn describe(fields: &[Field]) -> Value {
    Value::Array(
        fields
            .iter()
            .map(|f| {
                let mut d = describe_ty(&f.ty);
                if let Value::Object(m) = &mut d {
                    if f.required {
                        m.insert("required".into(), Value::Bool(true));
                    }
                    if let Some(def) = &f.default {
                        m.insert("default".into(), def.clone());
                    }
                    if f.unique {
                        m.insert("unique".into(), Value::Bool(true));
                    }
                    if f.auto {
                        m.insert("auto".into(), Value::Bool(true));
                    }
                    if f.secret {
                        m.insert("encrypted".into(), Value::Bool(true));
                    }
                }
                json!({ f.name: d })
            })
            .collect(),
    )
}

fn describe_ty(ty: &Ty) -> Value {
    match ty {
        Ty::Str {
            kind,
            one_of,
            len_min,
            len_max,
        } => {
            let mut m = Map::new();
            m.insert("type".into(), json!("string"));
            if *kind == StrKind::Uuid {
                m.insert("uuid".into(), json!(true));
            }
            if *kind != StrKind::Plain && *kind != StrKind::Uuid {
                m.insert("format".into(), json!(format!("{kind:?}").to_lowercase()));
            }
            if let Some(o) = one_of {
                m.insert("one_of".into(), json!(o));
            }
            if let Some(l) = len_min {
                m.insert("len_min".into(), json!(l));
            }
            if let Some(l) = len_max {
                m.insert("len_max".into(), json!(l));
            }
            Value::Object(m)
        }
        Ty::Int { min, max, one_of } => {
            let mut m = Map::new();
            m.insert("type".into(), json!("integer"));
            if let (Some(a), Some(b)) = (min, max) {
                m.insert("between".into(), json!([a, b]));
            }
            if let Some(o) = one_of {
                m.insert("one_of".into(), json!(o));
            }
            Value::Object(m)
        }
        Ty::Num { gt, min, max } => match (gt, min, max) {
            (Some(g), _, _) => json!({"type": "number", "gt": g}),
            (None, Some(lo), Some(hi)) => json!({"type": "number", "between": [lo, hi]}),
            _ => json!({"type": "number"}),
        },
        Ty::Bool => json!({"type": "boolean"}),
        Ty::Array { elem, set, .. } => {
            json!({"type": if *set { "set" } else { "array" }, "elements": describe_ty(elem)})
        }
        Ty::Map { values } => {
            json!({"type": "map", "keys": {"type": "string"}, "values": describe_ty(values)})
        }
        Ty::Record(fields) => json!({"type": "record", "fields": describe(fields)}),
        Ty::Foreign {
            reference,
            on_delete,
        } => {
            let mut m = json!({"type": "foreign", "reference": reference});
            if *on_delete == OnDelete::Cascade {
                m["on_delete"] = json!("cascade");
            }
            m
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<Field> {
        vec![
            Field::new("name", string()).req(),
            Field::new("port", int(0, 65535)).def(json!(80)),
            Field::new("on", boolean()).def(json!(true)),
            Field::new("tags", set(string())),
            Field::new("conf", record(vec![Field::new("minute", number_gt(0.0))])),
        ]
    }

    /// A set keeps the first of equal elements, in order, however many there are.
    #[test]
    fn sets_keep_the_first_of_equal_elements() {
        let mut tags: Vec<Value> = (0..100_000)
            .map(|i| json!(format!("t{}", i % 1000)))
            .collect();
        tags.insert(0, json!("first"));
        let input = json!({"name": "x", "tags": tags});
        let d = validate_record(&fields(), input.as_object().unwrap()).unwrap();
        let kept = d["tags"].as_array().unwrap();
        assert_eq!(kept.len(), 1001);
        assert_eq!(kept[0], "first");
        assert_eq!(kept[1], "t0");
        assert_eq!(kept[1000], "t999");
    }

    #[test]
    fn fills_defaults_and_collects_every_error() {
        let ok = validate_record(&fields(), json!({"name": "a"}).as_object().unwrap()).unwrap();
        assert_eq!(ok["port"], json!(80));
        assert_eq!(ok["on"], json!(true));
        assert_eq!(ok["tags"], Value::Null);
        let e = validate_record(
            &fields(),
            json!({"port": "x", "zzz": 1, "conf": {"minute": -1}})
                .as_object()
                .unwrap(),
        )
        .unwrap_err();
        assert_eq!(e.0["name"], json!("required field missing"));
        assert_eq!(e.0["port"], json!("expected an integer"));
        assert_eq!(e.0["zzz"], json!("unknown field"));
        assert_eq!(e.0["conf"]["minute"], json!("value must be greater than 0"));
        assert!(
            e.message().starts_with("4 schema violations ("),
            "{}",
            e.message()
        );
    }

    #[test]
    fn sets_drop_duplicates_and_arrays_report_positions() {
        let v = check(&set(string()), json!(["a", "a", "b"])).unwrap();
        assert_eq!(v, json!(["a", "b"]));
        let e = check(&array(int(0, 5)), json!([1, 9])).unwrap_err();
        assert_eq!(e, json!([null, "value should be between 0 and 5"]));
    }

    #[test]
    fn coerces_form_strings() {
        let mut m = json!({"port": "8080", "on": "false", "tags": "t1", "conf": {"minute": "5"}})
            .as_object()
            .unwrap()
            .clone();
        coerce(&fields(), &mut m);
        assert_eq!(m["port"], json!(8080));
        assert_eq!(m["on"], json!(false));
        assert_eq!(m["tags"], json!(["t1"]));
        assert_eq!(m["conf"]["minute"], json!(5));
    }

    #[test]
    fn patch_merges_records() {
        let mut base = json!({"name": "a", "conf": {"minute": 5, "hour": 9}})
            .as_object()
            .unwrap()
            .clone();
        let patch = json!({"conf": {"minute": 6}}).as_object().unwrap().clone();
        merge_patch(&fields(), &mut base, patch);
        assert_eq!(base["conf"], json!({"minute": 6, "hour": 9}));
    }
}
