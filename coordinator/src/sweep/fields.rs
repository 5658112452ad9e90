//! The machinery behind the one declaration of the training fields (`training_fields!` in
//! [`super::config`]): each field is declared once, with its path, type, default, rule and
//! place on the wire, and everything else (the structs, [`FIELDS`](super::config::FIELDS), the
//! reading with positions, the checks, the canonical text a trial id hashes, the conversion
//! to the worker's `TrialSpec`) walks the declaration through a [`Visit`].

use std::fmt::Write as _;

use bnsweep_proto as pb;

use super::config::{Kind, ParamValue, Settings, TrialConfig};
use super::diagnostic::Diagnostic;
use super::yaml::Pos;

/// Declares the training fields: the struct of a trial's configuration (with its groups),
/// the table of fields, and [`TrialConfig::visit`], which hands each field, in declaration
/// order (the order of a trial id's text), to a [`Visit`].
///
/// A field is `NAME: TYPE = "PATH" { OPTIONS } => WIRE;`, where the options ([`Opts`]) are
/// `default` (a value; without one the field is required), `default_from` (a function of the
/// fields declared before it), `rule` or `rule_from` (a [`Rule`]), `later` and `id_if_empty`;
/// `=> WIRE` names the field of `TrialSpec` (`model.name` is `spec.model.name`) when it is not
/// the field's own place. A group `NAME: STRUCT { FIELDS }` nests them one level.
macro_rules! training_fields {
    ($(#[$sm:meta])* $name:ident { $($body:tt)* }) => {
        training_fields!(@struct [$(#[$sm])*] $name [
            /// The trial's seed: its weights, batches and noise.
            pub seed: u64,
        ] $($body)*);
        training_fields!(@flat [] $($body)*);
    };

    // The structs: a group is a struct of its own.
    (@struct [$($sm:tt)*] $name:ident [$($acc:tt)*]
        $(#[$m:meta])* $f:ident : $t:ident { $($inner:tt)* } $($rest:tt)*) => {
        training_fields!(@struct [$(#[$m])*] $t [] $($inner)*);
        training_fields!(@struct [$($sm)*] $name [$($acc)* $(#[$m])* pub $f: $t,] $($rest)*);
    };
    (@struct [$($sm:tt)*] $name:ident [$($acc:tt)*]
        $(#[$m:meta])* $f:ident : $t:ty = $path:literal { $($opts:tt)* } $(=> $($w:ident).+)? ;
        $($rest:tt)*) => {
        training_fields!(@struct [$($sm)*] $name [$($acc)* $(#[$m])* pub $f: $t,] $($rest)*);
    };
    (@struct [$($sm:tt)*] $name:ident [$($acc:tt)*]) => {
        $($sm)*
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct $name { $($acc)* }
    };

    // The fields, flattened: (place) (type) path { options } [wire].
    (@flat [$($acc:tt)*] $(#[$m:meta])* $g:ident : $gt:ident {
        $( $(#[$im:meta])* $f:ident : $t:ty = $path:literal { $($opts:tt)* }
            $(=> $($w:ident).+)? ; )*
    } $($rest:tt)*) => {
        training_fields!(@flat [$($acc)* $( ($g . $f) ($t) $path { $($opts)* } [$($($w).+)?] )*]
            $($rest)*);
    };
    (@flat [$($acc:tt)*] $(#[$m:meta])* $f:ident : $t:ty = $path:literal { $($opts:tt)* }
        $(=> $($w:ident).+)? ; $($rest:tt)*) => {
        training_fields!(@flat [$($acc)* ($f) ($t) $path { $($opts)* } [$($($w).+)?]] $($rest)*);
    };
    (@flat [$( ($($place:ident).+) ($t:ty) $path:literal { $($opt:ident : $val:expr),* $(,)? }
        [$($w:ident).*] )*]) => {
        /// Every training field, in declaration order. A path with a dot lives in a nested
        /// mapping (`model: {width: 0.5}`).
        pub const FIELDS: &[Field] = &[
            $( Field { path: $path, kind: <$t as $crate::sweep::fields::FieldValue>::KIND }, )*
        ];

        impl TrialConfig {
            /// Hands every training field, in declaration order, to `v`.
            pub fn visit<V: $crate::sweep::fields::Visit>(v: &mut V) {
                $( v.field(&$crate::sweep::fields::FieldDef::<$t> {
                    path: $path,
                    opts: $crate::sweep::fields::Opts {
                        $( $opt: training_fields!(@opt $opt, $t, $val), )*
                        ..$crate::sweep::fields::Opts::NONE
                    },
                    get: |c| &c.$($place).+,
                    get_mut: |c| &mut c.$($place).+,
                    wire: |s| training_fields!(@wire s [$($place).+] [$($w).*]),
                }); )*
            }
        }
    };

    (@opt default, $t:ty, $v:expr) => {
        Some(|_: &TrialConfig| -> $t { $crate::sweep::fields::Lit::lit($v) })
    };
    (@opt rule, $t:ty, $v:expr) => { Some(|_: &TrialConfig| -> $crate::sweep::fields::Rule { $v }) };
    (@opt later, $t:ty, $v:expr) => { $v };
    (@opt $other:ident, $t:ty, $v:expr) => { Some($v) };

    // A field of `TrialSpec`: its own (`lr`) or one of a message's (`model.name`).
    (@wire $s:ident [$($p:ident).+] []) => { training_fields!(@wire $s [] [$($p).+]) };
    (@wire $s:ident [$($p:ident).*] [$a:ident]) => { &mut $s.$a };
    (@wire $s:ident [$($p:ident).*] [$a:ident . $b:ident]) => {
        &mut $s.$a.get_or_insert_with(Default::default).$b
    };
}

pub(crate) use training_fields;

/// The Rust types a training field may have, and how each reads and writes a [`ParamValue`].
pub trait FieldValue: Clone + Default + PartialEq + 'static {
    const KIND: Kind;
    /// The value, when `v` is of the field's kind (an integer already checked against its range).
    fn from_param(v: &ParamValue) -> Option<Self>;
    fn to_param(&self) -> ParamValue;
}

impl FieldValue for f64 {
    const KIND: Kind = Kind::Float;
    fn from_param(v: &ParamValue) -> Option<Self> {
        match v {
            ParamValue::Float(x) => Some(*x),
            _ => None,
        }
    }
    fn to_param(&self) -> ParamValue {
        ParamValue::Float(*self)
    }
}

impl FieldValue for bool {
    const KIND: Kind = Kind::Bool;
    fn from_param(v: &ParamValue) -> Option<Self> {
        match v {
            ParamValue::Bool(x) => Some(*x),
            _ => None,
        }
    }
    fn to_param(&self) -> ParamValue {
        ParamValue::Bool(*self)
    }
}

impl FieldValue for String {
    const KIND: Kind = Kind::Str;
    fn from_param(v: &ParamValue) -> Option<Self> {
        match v {
            ParamValue::Str(x) => Some(x.clone()),
            _ => None,
        }
    }
    fn to_param(&self) -> ParamValue {
        ParamValue::Str(self.clone())
    }
}

impl FieldValue for u32 {
    const KIND: Kind = Kind::Int;
    fn from_param(v: &ParamValue) -> Option<Self> {
        match v {
            ParamValue::Int(x) => Some(*x as u32),
            _ => None,
        }
    }
    fn to_param(&self) -> ParamValue {
        ParamValue::Int(i64::from(*self))
    }
}

impl FieldValue for u64 {
    const KIND: Kind = Kind::Int;
    fn from_param(v: &ParamValue) -> Option<Self> {
        match v {
            ParamValue::Int(x) => Some(*x as u64),
            _ => None,
        }
    }
    fn to_param(&self) -> ParamValue {
        ParamValue::Int(*self as i64)
    }
}

impl FieldValue for Vec<i64> {
    const KIND: Kind = Kind::IntList;
    fn from_param(v: &ParamValue) -> Option<Self> {
        match v {
            ParamValue::IntList(x) => Some(x.clone()),
            _ => None,
        }
    }
    fn to_param(&self) -> ParamValue {
        ParamValue::IntList(self.clone())
    }
}

/// A default as written in the declaration (`"vgg8"` for a `String`, `128` for a `u32`).
pub trait Lit<T> {
    fn lit(self) -> T;
}

impl<T: FieldValue> Lit<T> for T {
    fn lit(self) -> T {
        self
    }
}

impl Lit<String> for &str {
    fn lit(self) -> String {
        self.to_string()
    }
}

/// What a value set in the file must satisfy. A value that does not is reported at its
/// position with the field's path.
#[derive(Clone, Copy)]
pub enum Rule {
    /// A finite number for which the test holds; else `MESSAGE, got V`.
    Number(fn(f64) -> bool, &'static str),
    /// A number, infinities included, for which the test holds; else `MESSAGE, got V`.
    NumberOrInf(fn(f64) -> bool, &'static str),
    /// An integer in [min, max] (`must be >= MIN` when max is `i64::MAX`); one outside is
    /// reported and clamped into it, so that the checks across fields see a sane value.
    Range(i64, i64),
    /// One of these strings; else `unknown WHAT `V` (known: ...)`.
    OneOf(&'static [&'static str], &'static str),
    /// A string for which the test holds; else the message.
    Text(fn(&str) -> bool, &'static str),
    /// A list whose every element passes the test; else the message.
    Each(fn(i64) -> bool, &'static str),
}

/// A function of the fields declared before (and the seed).
pub type FromFields<T> = fn(&TrialConfig) -> T;

/// A training field's options; see `training_fields!`.
pub struct Opts<T> {
    /// The value when the file leaves the field out. Without a default the field is required.
    pub default: Option<FromFields<T>>,
    /// A default that depends on fields declared before this one.
    pub default_from: Option<FromFields<T>>,
    pub rule: Option<FromFields<Rule>>,
    /// A rule that depends on fields declared before this one.
    pub rule_from: Option<FromFields<Rule>>,
    /// Added after the first release: left out of a trial's id at its default, so that the
    /// ids of sweeps started before it stay the same (and their results directories resume).
    pub later: bool,
    /// The text a trial id hashes for an empty string (what the empty value once meant).
    pub id_if_empty: Option<&'static str>,
}

impl<T> Opts<T> {
    pub const NONE: Opts<T> = Opts {
        default: None,
        default_from: None,
        rule: None,
        rule_from: None,
        later: false,
        id_if_empty: None,
    };

    fn default_value(&self, c: &TrialConfig) -> Option<T> {
        self.default.or(self.default_from).map(|d| d(c))
    }
}

/// One declared training field.
pub struct FieldDef<T> {
    /// Its dotted path under `train:`, its name under `parameters:`.
    pub path: &'static str,
    pub opts: Opts<T>,
    pub get: fn(&TrialConfig) -> &T,
    pub get_mut: fn(&mut TrialConfig) -> &mut T,
    /// Its place in the worker's `TrialSpec`.
    pub wire: fn(&mut pb::TrialSpec) -> &mut T,
}

/// Something done to every training field in turn.
pub trait Visit {
    fn field<T: FieldValue>(&mut self, f: &FieldDef<T>);
}

/// Reads the settings of one trial into its configuration, field by field, collecting every
/// problem.
pub struct Build<'a> {
    pub config: TrialConfig,
    pub reader: Reader<'a>,
}

impl Visit for Build<'_> {
    fn field<T: FieldValue>(&mut self, f: &FieldDef<T>) {
        let value = self.reader.read(&self.config, f);
        *(f.get_mut)(&mut self.config) = value;
    }
}

/// The settings of one trial and the problems found in them.
pub struct Reader<'a> {
    pub settings: &'a Settings,
    pub diags: Vec<Diagnostic>,
}

impl Reader<'_> {
    /// Reports a problem at the setting of `path`, or at the file's start if it is not set.
    pub fn fail(&mut self, path: &str, message: String) {
        let (pos, shown) = match self.settings.get(path) {
            Some((_, o)) => (o.pos, o.path.clone()),
            None => (Pos { line: 1, col: 1 }, format!("train.{path}")),
        };
        self.diags.push(Diagnostic::new(pos, shown, message));
    }

    fn read<T: FieldValue>(&mut self, c: &TrialConfig, f: &FieldDef<T>) -> T {
        if let Some((value, _)) = self.settings.get(f.path) {
            let rule = f.opts.rule.or(f.opts.rule_from).map(|r| r(c));
            let clamped = rule.and_then(|r| self.check(f.path, value, r));
            if let Some(v) = T::from_param(clamped.as_ref().unwrap_or(value)) {
                return v;
            }
        }
        f.opts.default_value(c).unwrap_or_else(|| {
            self.fail(
                f.path,
                format!(
                    "missing: set `{}` under `train` or sweep it under `parameters`",
                    f.path
                ),
            );
            T::default()
        })
    }

    /// Checks a set value against its rule; an integer out of range comes back clamped.
    fn check(&mut self, path: &str, value: &ParamValue, rule: Rule) -> Option<ParamValue> {
        match (rule, value) {
            (Rule::Number(ok, what), ParamValue::Float(v)) if !v.is_finite() || !ok(*v) => {
                self.fail(path, format!("{what}, got {v}"));
            }
            (Rule::NumberOrInf(ok, what), ParamValue::Float(v)) if !ok(*v) => {
                self.fail(path, format!("{what}, got {v}"));
            }
            (Rule::Range(min, max), ParamValue::Int(v)) => {
                if *v < min || *v > max {
                    let rule = if max == i64::MAX {
                        format!("must be >= {min}")
                    } else {
                        format!("must be in [{min}, {max}]")
                    };
                    self.fail(path, format!("{rule}, got {v}"));
                }
                return Some(ParamValue::Int((*v).clamp(min, max)));
            }
            (Rule::OneOf(known, what), ParamValue::Str(v)) if !known.contains(&v.as_str()) => {
                self.fail(
                    path,
                    format!("unknown {what} `{v}` (known: {})", known.join(", ")),
                );
            }
            (Rule::Text(ok, what), ParamValue::Str(v)) if !ok(v) => {
                self.fail(path, what.to_string());
            }
            (Rule::Each(ok, what), ParamValue::IntList(v)) if !v.iter().all(|&x| ok(x)) => {
                self.fail(path, what.to_string());
            }
            _ => {}
        }
        None
    }
}

/// Writes every field in the exact notation a trial id hashes: `;PATH=VALUE` in declaration
/// order.
pub struct Canonical<'a> {
    pub config: &'a TrialConfig,
    pub out: String,
}

impl Visit for Canonical<'_> {
    fn field<T: FieldValue>(&mut self, f: &FieldDef<T>) {
        let value = (f.get)(self.config);
        if f.opts.later && f.opts.default_value(self.config).as_ref() == Some(value) {
            return;
        }
        let path = f.path;
        let _ = match (value.to_param(), f.opts.id_if_empty) {
            (ParamValue::Str(s), Some(meant)) if s.is_empty() => {
                write!(self.out, ";{path}={meant}")
            }
            // `{:?}` writes the shortest text that reads back as the same f64.
            (ParamValue::Float(v), _) => write!(self.out, ";{path}={v:?}"),
            (v, _) => write!(self.out, ";{path}={v}"),
        };
    }
}

/// The value of one field, by its path.
pub struct Get<'a> {
    pub config: &'a TrialConfig,
    pub path: &'a str,
    pub found: Option<ParamValue>,
}

impl Visit for Get<'_> {
    fn field<T: FieldValue>(&mut self, f: &FieldDef<T>) {
        if self.found.is_none() && f.path == self.path {
            self.found = Some((f.get)(self.config).to_param());
        }
    }
}

/// Every field onto the wire.
pub struct Wire<'a> {
    pub config: &'a TrialConfig,
    pub spec: pb::TrialSpec,
}

impl Visit for Wire<'_> {
    fn field<T: FieldValue>(&mut self, f: &FieldDef<T>) {
        *(f.wire)(&mut self.spec) = (f.get)(self.config).clone();
    }
}
