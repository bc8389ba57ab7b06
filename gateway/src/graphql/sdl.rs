//! SDL → executable schema. async-graphql has no SDL-to-dynamic-schema builder, so this module
//! is the mapping: `schema/*.graphql` is parsed with async-graphql's parser, its object, input,
//! enum and scalar types become `async_graphql::dynamic` types, and each field gets a resolver
//! from its directives ([`super::resolve`]). Every problem is reported with `file:line:column`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest as _;

use async_graphql::Name;
use async_graphql::dynamic::{
    Enum, Field, InputObject, InputValue, Object, Scalar, Schema, SchemaBuilder, TypeRef,
};
use async_graphql::parser::types::{
    BaseType, ConstDirective, DirectiveDefinition, EnumValueDefinition, FieldDefinition,
    InputValueDefinition, Type, TypeDefinition, TypeKind, TypeSystemDefinition,
};
use async_graphql::parser::{Pos, Positioned, parse_schema};

use super::directives::{self, DECLARATIONS, DECLARED_NAMES};
use super::nulls::Types;
use super::resolve::{Engine, FieldPlan, Plans, Shape, Source, resolver};
use crate::config::{ConfigError, Location};

const BUILT_IN_SCALARS: [&str; 5] = ["String", "Int", "Float", "Boolean", "ID"];

/// The schema's SDL files, read and parsed.
#[derive(Debug)]
pub struct Files {
    /// (file name, definitions) in file-name order.
    docs: Vec<(String, Vec<TypeSystemDefinition>)>,
    /// A digest of every file's name and text: whether the schema changed.
    pub digest: String,
}

/// Reads every `*.graphql` file of `dir`. `at` is where the config names the directory.
/// Files that do not parse are reported in the second part; the rest are still checked.
pub fn read(dir: &Path, at: &Location) -> Result<(Files, Vec<ConfigError>), Vec<ConfigError>> {
    let fail = |message: String| {
        vec![ConfigError {
            location: at.clone(),
            message,
        }]
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| fail(format!("cannot read the schema directory {}: {e}", dir.display())))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "graphql") && p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(fail(format!(
            "the schema directory {} has no *.graphql file",
            dir.display()
        )));
    }
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let mut digest = sha2::Sha256::new();
    for path in paths {
        let name = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError {
                    location: Location {
                        file: name,
                        line: 1,
                        column: 1,
                    },
                    message: format!("cannot read the schema file: {e}"),
                });
                continue;
            }
        };
        digest.update(name.as_bytes());
        digest.update([0]);
        digest.update(text.as_bytes());
        digest.update([0]);
        match parse_schema(&text) {
            Ok(doc) => docs.push((name, doc.definitions)),
            Err(e) => {
                let pos = e.positions().next().unwrap_or(Pos { line: 1, column: 1 });
                errors.push(at_pos(
                    &name,
                    pos,
                    format!("invalid GraphQL SDL: {}", parse_error_message(&e)),
                ));
            }
        }
    }
    let digest = hex::encode(&sha2::Digest::finalize(digest)[..8]);
    Ok((Files { docs, digest }, errors))
}

/// A parser error in one line: pest's message ends with "= expected ..." under a drawing of the
/// line, which `file:line:column` already points at.
pub(super) fn parse_error_message(e: &async_graphql::parser::Error) -> String {
    match e {
        async_graphql::parser::Error::Syntax { message, .. } => message
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(|l| l.trim_start_matches("= ").to_owned())
            .unwrap_or_else(|| "syntax error".into()),
        other => other.to_string(),
    }
}

fn at_pos(file: &str, pos: Pos, message: String) -> ConfigError {
    ConfigError {
        location: Location {
            file: file.to_owned(),
            line: pos.line,
            column: pos.column,
        },
        message,
    }
}

/// Schema-wide settings that are not in the SDL.
#[derive(Debug, Clone)]
pub struct Options {
    pub introspection: bool,
    pub suggestions: bool,
    pub max_depth: usize,
    pub max_complexity: usize,
}

/// What a type is, for checking references and choosing shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Object,
    Leaf,
    Input,
}

/// Builds the executable schema of `files`; `services` are the config's service names.
pub fn build(
    files: &Files,
    services: &[&str],
    engine: &Arc<Engine>,
    options: &Options,
) -> Result<(Schema, Types), Vec<ConfigError>> {
    let mut errors = Vec::new();
    let ours = our_declarations();
    let mut query_name = "Query".to_owned();
    let mut mutation_name = None;
    // Types by name (extensions merged into the first definition), with the file they are in.
    let mut types: BTreeMap<String, (String, TypeDefinition)> = BTreeMap::new();
    // The file each field, input field and type directive is in: an `extend type` may be in
    // another.
    let mut origins = Origins::default();
    let mut order: Vec<String> = Vec::new();
    for (file, defs) in &files.docs {
        for def in defs {
            match def {
                TypeSystemDefinition::Schema(s) => {
                    if let Some(q) = &s.node.query {
                        query_name = q.node.to_string();
                    }
                    if let Some(m) = &s.node.mutation {
                        mutation_name = Some(m.node.to_string());
                    }
                    if let Some(sub) = &s.node.subscription {
                        errors.push(at_pos(file, sub.pos, "subscriptions are not supported".into()));
                    }
                }
                TypeSystemDefinition::Directive(d) => {
                    let name = d.node.name.node.as_str();
                    if !DECLARED_NAMES.contains(&name) {
                        errors.push(at_pos(file, d.pos, format!("custom directive @{name} is not supported: the gateway knows @http, @auth and @from")));
                    } else if ours.directives.get(name).map(directive_sig) != Some(directive_sig(&d.node)) {
                        errors.push(at_pos(file, d.pos, format!("@{name} is the gateway's directive: remove this declaration or copy it from `gateway schema`")));
                    }
                }
                TypeSystemDefinition::Type(t) => {
                    let name = t.node.name.node.to_string();
                    if DECLARED_NAMES.contains(&name.as_str()) {
                        if ours.types.get(&name).map(type_sig) != Some(type_sig(&t.node)) {
                            errors.push(at_pos(file, t.pos, format!("{name} is declared by the gateway: remove this declaration or copy it from `gateway schema`")));
                        }
                        continue;
                    }
                    if BUILT_IN_SCALARS.contains(&name.as_str()) || name.starts_with("__") {
                        errors.push(at_pos(file, t.pos, format!("{name} is a built-in name")));
                        continue;
                    }
                    match types.get_mut(&name) {
                        Some((_, existing)) if t.node.extend => {
                            merge(existing, &t.node, file, &mut origins, &mut errors)
                        }
                        Some(_) => errors.push(at_pos(
                            file,
                            t.node.name.pos,
                            format!("type {name} is defined twice (use `extend type` to add fields)"),
                        )),
                        None => {
                            let mut def = without_members(&t.node);
                            add_members(&mut def, &t.node, file, &mut origins, &mut errors);
                            origins.add_directives(&name, t.node.directives.len(), file);
                            order.push(name.clone());
                            types.insert(name, (file.clone(), def));
                        }
                    }
                }
            }
        }
    }

    // Without a `schema { mutation: ... }` block, a type named Mutation is the mutation root.
    if mutation_name.is_none() && types.contains_key("Mutation") {
        mutation_name = Some("Mutation".to_owned());
    }
    let kinds: HashMap<&str, Kind> = types
        .iter()
        .filter_map(|(name, (file, def))| {
            let kind = match &def.kind {
                TypeKind::Object(_) => Kind::Object,
                TypeKind::Enum(_) | TypeKind::Scalar => Kind::Leaf,
                TypeKind::InputObject(_) => Kind::Input,
                TypeKind::Interface(_) | TypeKind::Union(_) => {
                    errors.push(at_pos(
                        file,
                        def.name.pos,
                        format!("{name}: interfaces and unions are not supported yet; use object types"),
                    ));
                    return None;
                }
            };
            Some((name.as_str(), kind))
        })
        .chain(BUILT_IN_SCALARS.iter().map(|s| (*s, Kind::Leaf)))
        .collect();
    let kind_of = |name: &str| kinds.get(name).copied();

    // `@auth` on a type applies to every field that returns it.
    let mut type_scopes: HashMap<&str, Vec<String>> = HashMap::new();
    for (name, (file, def)) in &types {
        for (i, d) in def.directives.iter().enumerate() {
            let file = origins.directive_file(name, i, file);
            match d.node.name.node.as_str() {
                "auth" if matches!(def.kind, TypeKind::Object(_)) => match directives::auth(&d.node) {
                    Ok(scopes) => type_scopes.entry(name).or_default().extend(scopes),
                    Err((pos, m)) => errors.push(at_pos(file, pos, m)),
                },
                other => errors.push(at_pos(
                    file,
                    d.pos,
                    format!("@{other} is not allowed on type {name}"),
                )),
            }
        }
    }

    match types.get(&query_name) {
        Some((_, def)) if matches!(def.kind, TypeKind::Object(_)) => {}
        _ => errors.push(ConfigError {
            location: Location {
                file: files.docs.first().map(|d| d.0.clone()).unwrap_or_default(),
                line: 1,
                column: 1,
            },
            message: format!("the schema has no `type {query_name}` with the root query fields"),
        }),
    }

    let mut builder_types: Vec<async_graphql::dynamic::Type> = Vec::new();
    let mut plans = Plans::default();
    let mut field_types = Types {
        query: query_name.clone(),
        mutation: mutation_name.clone(),
        ..Types::default()
    };
    for name in &order {
        let (file, def) = &types[name];
        let roots = [Some(query_name.as_str()), mutation_name.as_deref()];
        let is_root = roots.contains(&Some(name.as_str()));
        match &def.kind {
            TypeKind::Object(object) => {
                let mut out = Object::new(name.as_str());
                if let Some(d) = &def.description {
                    out = out.description(d.node.as_str());
                }
                field_types.fields.insert(
                    name.clone(),
                    object
                        .fields
                        .iter()
                        .map(|f| (f.node.name.node.to_string(), type_ref(&f.node.ty.node)))
                        .collect(),
                );
                for field in &object.fields {
                    let file = origins.file_of(name, &field.node.name.node, file);
                    let at = |pos: Pos, m: String| {
                        at_pos(file, pos, format!("{name}.{}: {m}", field.node.name.node))
                    };
                    match field_plan(name, &field.node, is_root, services, &kind_of, &type_scopes) {
                        Ok(plan) => {
                            let plan = Arc::new(plan);
                            plans
                                .types
                                .entry(name.clone())
                                .or_default()
                                .insert(field.node.name.node.to_string(), plan.clone());
                            out = out.field(dynamic_field(
                                &field.node,
                                plan,
                                engine,
                                &kind_of,
                                &mut errors,
                                file,
                            ))
                        }
                        Err(problems) => errors.extend(problems.into_iter().map(|(pos, m)| at(pos, m))),
                    }
                }
                builder_types.push(out.into());
            }
            TypeKind::InputObject(input) => {
                let mut out = InputObject::new(name.as_str());
                for field in &input.fields {
                    let file = origins.file_of(name, &field.node.name.node, file);
                    out = out.field(input_value(&field.node, &kind_of, &mut errors, file));
                }
                builder_types.push(out.into());
            }
            TypeKind::Enum(e) => {
                let mut out = Enum::new(name.as_str());
                for v in &e.values {
                    out = out.item(v.node.value.node.as_str());
                }
                builder_types.push(out.into());
            }
            TypeKind::Scalar => builder_types.push(Scalar::new(name.as_str()).into()),
            _ => {}
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut builder: SchemaBuilder = Schema::build(&query_name, mutation_name.as_deref(), None);
    for t in builder_types {
        builder = builder.register(t);
    }
    builder = builder
        .limit_depth(options.max_depth)
        .limit_complexity(options.max_complexity);
    if !options.introspection {
        builder = builder.disable_introspection();
    }
    if !options.suggestions {
        builder = builder.disable_suggestions();
    }
    let schema = builder.finish().map_err(|e| {
        vec![ConfigError {
            location: Location {
                file: files.docs.first().map(|d| d.0.clone()).unwrap_or_default(),
                line: 1,
                column: 1,
            },
            message: format!("the schema is not valid: {e}"),
        }]
    })?;
    let _ = engine.plans.set(plans);
    Ok((schema, field_types))
}

type Problems = Vec<(Pos, String)>;

/// Reads a field's directives into its plan.
fn field_plan(
    type_name: &str,
    field: &FieldDefinition,
    is_root: bool,
    services: &[&str],
    kind_of: &impl Fn(&str) -> Option<Kind>,
    type_scopes: &HashMap<&str, Vec<String>>,
) -> Result<FieldPlan, Problems> {
    let mut problems = Vec::new();
    let mut http = None;
    let mut from = None;
    let mut scopes: Option<Vec<String>> = type_scopes.get(named(&field.ty.node)).cloned();
    for d in &field.directives {
        match d.node.name.node.as_str() {
            "http" => match directives::http(&d.node, d.pos, services) {
                Ok(call) => http = Some(call),
                Err(e) => problems.extend(e),
            },
            "from" => match directives::from(&d.node, d.pos) {
                Ok(key) => from = Some(key),
                Err(e) => problems.push(e),
            },
            "auth" => match directives::auth(&d.node) {
                Ok(s) => scopes.get_or_insert_with(Vec::new).extend(s),
                Err(e) => problems.push(e),
            },
            "deprecated" => {}
            other => problems.push((
                d.pos,
                format!("unknown directive @{other} (the gateway knows @http, @auth, @from)"),
            )),
        }
    }
    let shape = match shape(&field.ty.node, kind_of) {
        Ok(s) => s,
        Err(m) => {
            problems.push((field.ty.pos, m));
            Shape::Leaf
        }
    };
    if let Some(call) = &http {
        // Every argument a template names must exist.
        let declared: HashSet<&str> = field
            .arguments
            .iter()
            .map(|a| a.node.name.node.as_str())
            .collect();
        let templates = std::iter::once(&call.path)
            .chain(call.query.iter().map(|(_, t)| t))
            .chain(call.headers.iter().map(|(_, t)| t))
            .chain(call.body.iter());
        for t in templates {
            for var in t.vars() {
                if var.source == super::template::Source::Args && !declared.contains(var.path[0].as_str()) {
                    problems.push((
                        field.name.pos,
                        format!(
                            "the template reads {{args.{}}} but the field has no argument `{}`",
                            var.path[0], var.path[0]
                        ),
                    ));
                }
                if var.source == super::template::Source::Parent && is_root {
                    problems.push((
                        field.name.pos,
                        "a root field has no parent: its templates cannot read {parent.*}".into(),
                    ));
                }
            }
        }
        if call.batch.is_some() && is_root {
            problems.push((
                field.name.pos,
                "`batch` needs sibling parents: it is for fields of object types, not root fields".into(),
            ));
        }
    } else if is_root && !field.directives.iter().any(|d| d.node.name.node == "http") {
        problems.push((
            field.name.pos,
            format!("a field of {type_name} needs @http: there is no parent data to read"),
        ));
    }
    if http.is_some() && from.is_some() {
        problems.push((
            field.name.pos,
            "@from reads the parent; it cannot be combined with @http".into(),
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let source = match http {
        Some(call) => Source::Http(Box::new(call)),
        None => Source::Parent(from.unwrap_or_else(|| vec![field.name.node.to_string()])),
    };
    Ok(FieldPlan {
        id: format!("{type_name}.{}", field.name.node),
        source,
        shape,
        scopes,
        type_name: named(&field.ty.node).to_owned(),
        arg_defaults: field
            .arguments
            .iter()
            .filter_map(|a| {
                let default = a.node.default_value.as_ref()?;
                Some((
                    a.node.name.node.to_string(),
                    default.node.clone().into_json().ok()?,
                ))
            })
            .collect(),
    })
}

fn dynamic_field(
    def: &FieldDefinition,
    plan: Arc<FieldPlan>,
    engine: &Arc<Engine>,
    kind_of: &impl Fn(&str) -> Option<Kind>,
    errors: &mut Vec<ConfigError>,
    file: &str,
) -> Field {
    let engine = engine.clone();
    let mut field = Field::new(def.name.node.as_str(), type_ref(&def.ty.node), move |ctx| {
        resolver(&engine, &plan, ctx)
    });
    if let Some(d) = &def.description {
        field = field.description(d.node.as_str());
    }
    if let Some(reason) = deprecation(&def.directives) {
        field = field.deprecation(reason.as_deref());
    }
    for arg in &def.arguments {
        field = field.argument(input_value(&arg.node, kind_of, errors, file));
    }
    field
}

fn deprecation(directives: &[Positioned<ConstDirective>]) -> Option<Option<String>> {
    let d = directives.iter().find(|d| d.node.name.node == "deprecated")?;
    Some(d.node.get_argument("reason").and_then(|r| match &r.node {
        async_graphql::Value::String(s) => Some(s.clone()),
        _ => None,
    }))
}

fn input_value(
    def: &InputValueDefinition,
    kind_of: &impl Fn(&str) -> Option<Kind>,
    errors: &mut Vec<ConfigError>,
    file: &str,
) -> InputValue {
    match kind_of(named(&def.ty.node)) {
        Some(Kind::Input | Kind::Leaf) => {}
        Some(Kind::Object) => errors.push(at_pos(
            file,
            def.ty.pos,
            format!(
                "`{}`: {} is an output type; arguments and input fields need scalars, enums or input types",
                def.name.node,
                named(&def.ty.node)
            ),
        )),
        None => errors.push(at_pos(
            file,
            def.ty.pos,
            format!("`{}`: unknown type {}", def.name.node, named(&def.ty.node)),
        )),
    }
    let mut v = InputValue::new(def.name.node.as_str(), type_ref(&def.ty.node));
    if let Some(d) = &def.description {
        v = v.description(d.node.as_str());
    }
    if let Some(default) = &def.default_value {
        v = v.default_value(default.node.clone());
    }
    v
}

fn named(ty: &Type) -> &str {
    match &ty.base {
        BaseType::Named(n) => n.as_str(),
        BaseType::List(inner) => named(inner),
    }
}

fn type_ref(ty: &Type) -> TypeRef {
    let base = match &ty.base {
        BaseType::Named(n) => TypeRef::Named(n.to_string().into()),
        BaseType::List(inner) => TypeRef::List(Box::new(type_ref(inner))),
    };
    if ty.nullable {
        base
    } else {
        TypeRef::NonNull(Box::new(base))
    }
}

fn shape(ty: &Type, kind_of: &impl Fn(&str) -> Option<Kind>) -> Result<Shape, String> {
    match &ty.base {
        BaseType::List(inner) => Ok(Shape::List(Box::new(shape(inner, kind_of)?))),
        BaseType::Named(n) => match kind_of(n.as_str()) {
            Some(Kind::Object) => Ok(Shape::Object),
            Some(Kind::Leaf) => Ok(Shape::Leaf),
            Some(Kind::Input) => Err(format!(
                "{n} is an input type; a field returns an object, scalar or enum type"
            )),
            None => Err(format!("unknown type {n}")),
        },
    }
}

/// Adds an `extend type`'s fields (or enum values, input fields) to the type it extends.
fn merge(
    into: &mut TypeDefinition,
    ext: &TypeDefinition,
    file: &str,
    origins: &mut Origins,
    errors: &mut Vec<ConfigError>,
) {
    into.directives.extend(ext.directives.iter().cloned());
    origins.add_directives(ext.name.node.as_str(), ext.directives.len(), file);
    match (&into.kind, &ext.kind) {
        (TypeKind::Object(_), TypeKind::Object(_))
        | (TypeKind::InputObject(_), TypeKind::InputObject(_))
        | (TypeKind::Enum(_), TypeKind::Enum(_)) => add_members(into, ext, file, origins, errors),
        _ => errors.push(at_pos(
            file,
            ext.name.pos,
            format!("`extend` of {} does not match its kind", ext.name.node),
        )),
    }
}

/// The file each part of a type is defined in, for types extended in other files.
#[derive(Default)]
struct Origins {
    /// (type, field or input field) → file.
    members: HashMap<(String, String), String>,
    /// type → the file of each of its directives, in order.
    directives: HashMap<String, Vec<String>>,
}

impl Origins {
    fn file_of<'a>(&'a self, type_name: &str, member: &str, or: &'a str) -> &'a str {
        self.members
            .get(&(type_name.to_owned(), member.to_owned()))
            .map_or(or, String::as_str)
    }

    fn add_directives(&mut self, type_name: &str, count: usize, file: &str) {
        let files = self.directives.entry(type_name.to_owned()).or_default();
        files.extend(std::iter::repeat_n(file.to_owned(), count));
    }

    fn directive_file<'a>(&'a self, type_name: &str, index: usize, or: &'a str) -> &'a str {
        self.directives
            .get(type_name)
            .and_then(|files| files.get(index))
            .map_or(or, String::as_str)
    }
}

/// A type's definition with no fields, input fields or enum values yet.
fn without_members(def: &TypeDefinition) -> TypeDefinition {
    let mut def = def.clone();
    match &mut def.kind {
        TypeKind::Object(o) => o.fields.clear(),
        TypeKind::InputObject(i) => i.fields.clear(),
        TypeKind::Enum(e) => e.values.clear(),
        _ => {}
    }
    def
}

/// Adds `from`'s fields (input fields, enum values) to `into`, each name once. A name defined
/// again, in the same definition or in an `extend`, and an argument named twice in one field,
/// are reported where they are defined again and left out: GraphQL allows neither, and
/// async-graphql's schema builder would panic on a repeated field.
fn add_members(
    into: &mut TypeDefinition,
    from: &TypeDefinition,
    file: &str,
    origins: &mut Origins,
    errors: &mut Vec<ConfigError>,
) {
    let type_name = from.name.node.as_str();
    let mut origin = |member: &Positioned<Name>| {
        let key = (type_name.to_owned(), member.node.to_string());
        origins.members.insert(key, file.to_owned());
    };
    match (&mut into.kind, &from.kind) {
        (TypeKind::Object(into), TypeKind::Object(from)) => {
            let described = |n: &Name| format!("field {type_name}.{n}");
            let added = |field: &mut FieldDefinition, errors: &mut Vec<ConfigError>| {
                let of = field.name.node.clone();
                let described = |n: &Name| format!("argument `{n}` of {type_name}.{of}");
                let mut arguments = Vec::new();
                append_unique(
                    &mut arguments,
                    &field.arguments,
                    described,
                    file,
                    errors,
                    |_, _| {},
                );
                field.arguments = arguments;
                origin(&field.name);
            };
            append_unique(&mut into.fields, &from.fields, described, file, errors, added);
        }
        (TypeKind::InputObject(into), TypeKind::InputObject(from)) => {
            let described = |n: &Name| format!("input field {type_name}.{n}");
            let added = |field: &mut InputValueDefinition, _: &mut Vec<ConfigError>| origin(&field.name);
            append_unique(&mut into.fields, &from.fields, described, file, errors, added);
        }
        (TypeKind::Enum(into), TypeKind::Enum(from)) => {
            let described = |n: &Name| format!("enum value {type_name}.{n}");
            append_unique(&mut into.values, &from.values, described, file, errors, |_, _| {});
        }
        _ => {}
    }
}

/// A member of a type definition: a field, an input value (input field, argument), an enum value.
trait Member: Clone {
    fn name(&self) -> &Positioned<Name>;
}

impl Member for FieldDefinition {
    fn name(&self) -> &Positioned<Name> {
        &self.name
    }
}

impl Member for InputValueDefinition {
    fn name(&self) -> &Positioned<Name> {
        &self.name
    }
}

impl Member for EnumValueDefinition {
    fn name(&self) -> &Positioned<Name> {
        &self.value
    }
}

/// Appends each of `from`'s members whose name `into` does not have yet, after `added` (which
/// may report problems of its own); one it has already is reported as `{described(name)} is
/// defined twice` where it is defined again, and left out.
fn append_unique<T: Member>(
    into: &mut Vec<Positioned<T>>,
    from: &[Positioned<T>],
    described: impl Fn(&Name) -> String,
    file: &str,
    errors: &mut Vec<ConfigError>,
    mut added: impl FnMut(&mut T, &mut Vec<ConfigError>),
) {
    for member in from {
        let name = member.node.name();
        if into.iter().any(|m| m.node.name().node == name.node) {
            let message = format!("{} is defined twice", described(&name.node));
            errors.push(at_pos(file, name.pos, message));
            continue;
        }
        let mut member = member.clone();
        added(&mut member.node, errors);
        into.push(member);
    }
}

/// The gateway's declarations, parsed, to compare a file's copies against.
struct Ours {
    directives: HashMap<String, DirectiveDefinition>,
    types: HashMap<String, TypeDefinition>,
}

fn our_declarations() -> Ours {
    let mut ours = Ours {
        directives: HashMap::new(),
        types: HashMap::new(),
    };
    // The declarations are a constant checked by a unit test; they always parse.
    if let Ok(doc) = parse_schema(DECLARATIONS) {
        for def in doc.definitions {
            match def {
                TypeSystemDefinition::Directive(d) => {
                    ours.directives.insert(d.node.name.node.to_string(), d.node);
                }
                TypeSystemDefinition::Type(t) => {
                    ours.types.insert(t.node.name.node.to_string(), t.node);
                }
                TypeSystemDefinition::Schema(_) => {}
            }
        }
    }
    ours
}

/// A directive declaration's meaning: arguments (name, type, default) and locations.
fn directive_sig(d: &DirectiveDefinition) -> String {
    let args: Vec<String> = d.arguments.iter().map(|a| input_sig(&a.node)).collect();
    let mut locations: Vec<String> = d.locations.iter().map(|l| format!("{:?}", l.node)).collect();
    locations.sort();
    format!(
        "{}({}){} on {}",
        d.name.node,
        args.join(","),
        d.is_repeatable,
        locations.join("|")
    )
}

fn type_sig(t: &TypeDefinition) -> String {
    match &t.kind {
        TypeKind::InputObject(i) => {
            let fields: Vec<String> = i.fields.iter().map(|f| input_sig(&f.node)).collect();
            format!("input {}{{{}}}", t.name.node, fields.join(","))
        }
        TypeKind::Scalar => format!("scalar {}", t.name.node),
        _ => format!("other {}", t.name.node),
    }
}

fn input_sig(a: &InputValueDefinition) -> String {
    format!(
        "{}:{}={}",
        a.name.node,
        a.ty.node,
        a.default_value
            .as_ref()
            .map(|v| v.node.to_string())
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declarations_parse_and_name_what_they_declare() {
        let doc = parse_schema(DECLARATIONS).unwrap();
        assert_eq!(doc.definitions.len(), DECLARED_NAMES.len());
        let ours = our_declarations();
        assert_eq!(ours.directives.len() + ours.types.len(), DECLARED_NAMES.len());
    }
}
