//! Null propagation (GraphQL spec §6.4.4) after execution.
//!
//! async-graphql's dynamic executor leaves a failed field out of its parent object instead of
//! setting it to null, and never nulls the parent of a failed non-null field. This pass walks the
//! response along the operation's selections: a missing field becomes null, and a null in a
//! non-null position makes its parent null, up to the nearest nullable field (or `data` itself).

use foldhash::HashMap;

use async_graphql::dynamic::TypeRef;
use async_graphql::indexmap::IndexMap;
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection, SelectionSet,
};
use async_graphql::{Name, Positioned, Value};

/// Field types by object type, from the schema files.
#[derive(Debug, Default)]
pub struct Types {
    pub fields: HashMap<String, HashMap<String, TypeRef>>,
    pub query: String,
    pub mutation: Option<String>,
}

/// Applies null propagation to `data` for the operation `name` of `doc`.
pub fn propagate(
    types: &Types,
    doc: &ExecutableDocument,
    name: Option<&str>,
    variables: &serde_json::Value,
    data: &mut Value,
) {
    let Some(op) = operation(doc, name) else { return };
    let root = match op.node.ty {
        OperationType::Query => types.query.as_str(),
        OperationType::Mutation => match &types.mutation {
            Some(m) => m.as_str(),
            None => return,
        },
        OperationType::Subscription => return,
    };
    let walk = Walk {
        types,
        doc,
        variables,
    };
    let null_data = match data {
        Value::Object(map) => walk.object(map, &op.node.selection_set.node, root),
        _ => false,
    };
    if null_data {
        *data = Value::Null;
    }
}

/// The operation a request runs: the named one, or the only one.
pub fn operation<'d>(
    doc: &'d ExecutableDocument,
    name: Option<&str>,
) -> Option<&'d Positioned<OperationDefinition>> {
    match (&doc.operations, name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        _ => None,
    }
}

struct Walk<'a> {
    types: &'a Types,
    doc: &'a ExecutableDocument,
    variables: &'a serde_json::Value,
}

impl Walk<'_> {
    /// Fixes an object in place; `true` when a non-null field of it is null (the object must
    /// become null).
    fn object(&self, map: &mut IndexMap<Name, Value>, selections: &SelectionSet, type_name: &str) -> bool {
        let mut fields = Vec::new();
        self.collect(selections, &mut fields, 0);
        let mut old = std::mem::take(map);
        let mut null_me = false;
        for (key, name, sub) in fields {
            if map.contains_key(key.as_str()) {
                continue;
            }
            let mut value = old.shift_remove(key.as_str()).unwrap_or(Value::Null);
            if !name.starts_with("__")
                && let Some(ty) = self
                    .types
                    .fields
                    .get(type_name)
                    .and_then(|f| f.get(name.as_str()))
                && self.value(&mut value, ty, sub)
            {
                null_me = true;
            }
            map.insert(key, value);
        }
        // Anything async-graphql answered that the walk did not expect stays as it was.
        map.extend(old);
        null_me
    }

    /// Fixes a value of type `ty`; `true` when it is null in a non-null position.
    fn value(&self, value: &mut Value, ty: &TypeRef, sub: Option<&SelectionSet>) -> bool {
        match ty {
            TypeRef::NonNull(inner) => {
                if matches!(value, Value::Null) {
                    return true;
                }
                if self.value(value, inner, sub) {
                    *value = Value::Null;
                    return true;
                }
                false
            }
            TypeRef::List(inner) => {
                if let Value::List(items) = value
                    && items
                        .iter_mut()
                        .fold(false, |acc, item| self.value(item, inner, sub) | acc)
                {
                    *value = Value::Null;
                }
                false
            }
            TypeRef::Named(name) => {
                if let (Value::Object(map), Some(sub)) = (&mut *value, sub)
                    && self.object(map, sub, name)
                {
                    *value = Value::Null;
                }
                false
            }
        }
    }

    /// The fields a selection set selects, in order: (response key, field name, sub-selection).
    fn collect<'s>(
        &'s self,
        set: &'s SelectionSet,
        out: &mut Vec<(Name, Name, Option<&'s SelectionSet>)>,
        depth: usize,
    ) {
        if depth > 32 {
            return;
        }
        for item in &set.items {
            if !self.included(item.node.directives()) {
                continue;
            }
            match &item.node {
                Selection::Field(f) => {
                    let f = &f.node;
                    let sub = (!f.selection_set.node.items.is_empty()).then_some(&f.selection_set.node);
                    out.push((f.response_key().node.clone(), f.name.node.clone(), sub));
                }
                Selection::InlineFragment(f) => self.collect(&f.node.selection_set.node, out, depth + 1),
                Selection::FragmentSpread(s) => {
                    if let Some(fragment) = self.doc.fragments.get(&s.node.fragment_name.node) {
                        self.collect(&fragment.node.selection_set.node, out, depth + 1);
                    }
                }
            }
        }
    }

    /// `@skip(if:)` and `@include(if:)`.
    fn included(&self, directives: &[Positioned<async_graphql::parser::types::Directive>]) -> bool {
        directives.iter().all(|d| {
            let cond = d.node.get_argument("if").map(|v| {
                let value = v.node.clone().into_const_with(|name| {
                    let var = self.variables.get(name.as_str()).cloned().unwrap_or_default();
                    Value::from_json(var).map_err(|_| ())
                });
                matches!(value, Ok(Value::Boolean(true)))
            });
            keeps(d.node.name.node.as_str(), cond)
        })
    }
}

/// Whether a directive named `name` whose `if` is `cond` keeps its field: `@skip(if: true)` and
/// `@include(if: false)` leave it out.
pub fn keeps(name: &str, cond: Option<bool>) -> bool {
    match name {
        "skip" => cond != Some(true),
        "include" => cond != Some(false),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::parser::parse_query;

    fn types() -> Types {
        let mut t = Types {
            query: "Query".into(),
            ..Default::default()
        };
        let nn = |n: &str| TypeRef::NonNull(Box::new(TypeRef::Named(n.to_owned().into())));
        t.fields.insert(
            "Query".into(),
            [
                ("a".to_owned(), TypeRef::Named("A".into())),
                ("b".to_owned(), nn("String")),
            ]
            .into_iter()
            .collect(),
        );
        t.fields.insert(
            "A".into(),
            [
                ("x".to_owned(), nn("String")),
                ("y".to_owned(), TypeRef::Named("String".into())),
            ]
            .into_iter()
            .collect(),
        );
        t
    }

    /// The fixed data, serialized in order.
    fn run(query: &str, data: serde_json::Value) -> String {
        let mut data = Value::from_json(data).unwrap();
        propagate(
            &types(),
            &parse_query(query).unwrap(),
            None,
            &serde_json::Value::Null,
            &mut data,
        );
        serde_json::to_string(&data).unwrap()
    }

    #[test]
    fn missing_nullable_fields_become_null_in_selection_order() {
        let out = run("{ a { y x } b }", serde_json::json!({"b": "1", "a": {"x": "2"}}));
        assert_eq!(out, r#"{"a":{"y":null,"x":"2"},"b":"1"}"#);
    }

    #[test]
    fn a_missing_non_null_field_nulls_its_parent_up_to_a_nullable_one() {
        assert_eq!(
            run("{ a { x y } b }", serde_json::json!({"b": "1", "a": {"y": "2"}})),
            r#"{"a":null,"b":"1"}"#
        );
        assert_eq!(run("{ a { x } b }", serde_json::json!({"a": {"x": "1"}})), "null");
        assert_eq!(
            run("{ a @skip(if: true) { x } b }", serde_json::json!({"b": "1"})),
            r#"{"b":"1"}"#
        );
    }
}
