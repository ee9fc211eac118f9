//! One CUR file's Bedrock lines summed straight off its Arrow batches: what `load` runs for
//! every row group of the period.
//!
//! The group key is day × line type × product code × usage type × resource × tag × pricing
//! unit × description × product name × usage account × IAM principal. A CUR repeats a handful of strings millions of times, and Parquet
//! stores each string column as a dictionary plus small integer keys, so text columns are read
//! as Arrow dictionaries ([`FilePlan::reader_schema`]): each distinct value of a column chunk is
//! interned once, and a line becomes a key of eleven integers. Strings are materialised only
//! for the groups, when a row group is done ([`Groups::into_keys`]).
//!
//! The semantics are those of this query (nulls as SQL has them):
//!
//! ```sql
//! SELECT CAST(CAST(line_item_usage_start_date AS TIMESTAMP) AS DATE) AS day,
//!        COALESCE(line_item_line_item_type, ''), COALESCE(line_item_product_code, ''),
//!        COALESCE(line_item_usage_type, ''), COALESCE(line_item_resource_id, ''),
//!        NULLIF(TRIM(<tenant tag>), '') AS tag, COALESCE(pricing_unit, ''),
//!        CASE WHEN line_item_line_item_type = 'Usage' THEN ''
//!             ELSE COALESCE(line_item_line_item_description, '') END,
//!        CASE WHEN <first-party code> THEN '' ELSE COALESCE(<product name>, '') END,
//!        COALESCE(line_item_usage_account_id, ''), COALESCE(line_item_iam_principal, ''),
//!        SUM(<usage amount as money>), SUM(<unblended cost as money>), COUNT(*)
//! WHERE (<first-party code> OR <product name> LIKE '%Amazon Bedrock%')
//!   AND <billing period start in the period, when the file has the column>
//! GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
//! ```
//!
//! where a first-party code is `line_item_product_code IN ('AmazonBedrock',
//! 'AmazonBedrockFoundationModels', 'AmazonBedrockService')`; Marketplace editions have a
//! product code of their own and "(Amazon Bedrock Edition)" in the product name, which is what
//! names their model.
//!
//! where the tenant tag is `resource_tags['user_<tag>']` (CUR 2.0) or
//! `resource_tags_user_<tag>` (legacy), the product name `product['product_name']` or
//! `product_product_name`, and money is read exactly as `cur::money` says. A column the file
//! lacks reads as NULL.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit, TimestampNanosecondType};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::FormatOptions;
use rustc_hash::FxHashMap;

use crate::money;
use crate::month::Month;

/// One group of Bedrock lines: day × line type × product code × usage type × resource × tag ×
/// pricing unit × description (descriptions kept for adjustments only) × product name
/// (Marketplace lines only) × usage account × IAM principal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    /// `YYYY-MM-DD` of `line_item_usage_start_date`, UTC.
    pub day: String,
    pub line_item_type: String,
    pub product_code: String,
    pub usage_type: String,
    /// `line_item_resource_id`, empty when absent.
    pub resource: String,
    /// The tenant tag's value; `None` when absent or blank.
    pub tag: Option<String>,
    pub pricing_unit: String,
    /// `line_item_line_item_description` for adjustments; empty for usage.
    pub description: String,
    /// The product name of a Marketplace line (`… (Amazon Bedrock Edition)`); empty for
    /// first-party lines.
    pub product_name: String,
    /// `line_item_usage_account_id`, empty when absent.
    pub account: String,
    /// `line_item_iam_principal` (CUR 2.0 with IAM principal data), empty when absent.
    pub principal: String,
}

/// Which usage accounts and IAM principals a group key keeps: only those allocation can use (a
/// silo tenant's accounts; principals the identity rule can name). Every other one reads as
/// empty, so a CUR spread over many linked accounts and caller sessions still sums into few
/// groups.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    pub accounts: Arc<std::collections::HashSet<String>>,
    pub principal: Option<regex::Regex>,
}

/// Sums of one group, money and quantity in units of 10⁻¹⁰.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupSums {
    /// `line_item_usage_amount`, in the pricing unit.
    pub quantity: i128,
    /// `line_item_unblended_cost`.
    pub cost: i128,
    pub lines: u64,
}

const CODE: &str = "line_item_product_code";
const USAGE_TYPE: &str = "line_item_usage_type";
const COST: &str = "line_item_unblended_cost";
const START: &str = "line_item_usage_start_date";
const LINE_TYPE: &str = "line_item_line_item_type";
const RESOURCE: &str = "line_item_resource_id";
const UNIT: &str = "pricing_unit";
const DESCRIPTION: &str = "line_item_line_item_description";
const AMOUNT: &str = "line_item_usage_amount";
const PERIOD: &str = "bill_billing_period_start_date";
const ACCOUNT: &str = "line_item_usage_account_id";
const PRINCIPAL: &str = "line_item_iam_principal";

/// The columns every CUR line item has.
pub const REQUIRED: [&str; 5] = [CODE, USAGE_TYPE, COST, START, LINE_TYPE];

const BEDROCK: &str = "AmazonBedrock";
/// The first-party Bedrock product codes (SPEC §3).
pub const BEDROCK_CODES: [&str; 3] = [BEDROCK, "AmazonBedrockFoundationModels", "AmazonBedrockService"];
const NANOS_PER_DAY: i64 = 86_400_000_000_000;

/// Why a file cannot be read by the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    MissingColumn(String),
    WrongType { column: String, found: String, expected: String },
}

/// Where a map-or-flat value (the tenant tag, the product name) is in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MapOrColumn {
    /// `map_column[key]` (CUR 2.0).
    Map {
        column: String,
        key: String,
    },
    /// A flat column (legacy CUR).
    Column(String),
    Absent,
}

impl MapOrColumn {
    fn column(&self) -> Option<&str> {
        match self {
            MapOrColumn::Map { column, .. } | MapOrColumn::Column(column) => Some(column),
            MapOrColumn::Absent => None,
        }
    }
}

/// How one file is read, built from its own schema (`file_schema`: Parquet's types, as
/// `parquet_to_arrow_schema` gives them without the embedded Arrow schema).
#[derive(Debug, Clone)]
pub struct FilePlan {
    /// The file's schema with every top-level text column read as a dictionary.
    reader_schema: SchemaRef,
    /// Top-level indices of the columns read, product name excluded.
    columns: Vec<usize>,
    /// The product name's top-level index, when the file has one.
    product_column: Option<usize>,
    tag: MapOrColumn,
    product: MapOrColumn,
    /// `[start, end)` of the period in nanoseconds since the epoch, UTC.
    period: (i64, i64),
    keep: KeyFilter,
}

impl FilePlan {
    /// The plan for a file with `file_schema`, for the period starting `start` (`YYYY`, `M`)
    /// and the tenant tag `tag`.
    pub fn new(file_schema: &Schema, year: i32, month: u32, tag: &str, keep: KeyFilter) -> Result<FilePlan, PlanError> {
        let has = |c: &str| file_schema.field_with_name(c).ok().map(|f| f.data_type().clone());
        for c in REQUIRED {
            has(c).ok_or_else(|| PlanError::MissingColumn(c.to_string()))?;
        }
        for c in [AMOUNT, COST] {
            match has(c) {
                None => {}
                Some(t) if t.is_numeric() || is_text(&t) => {}
                Some(t) => {
                    return Err(PlanError::WrongType {
                        column: c.into(),
                        found: t.to_string(),
                        expected: "a number".into(),
                    })
                }
            }
        }
        let map_or_column = |map: &str, key: String, flat: String| match (has(map), has(&flat)) {
            (Some(DataType::Map(..)), _) => MapOrColumn::Map { column: map.to_string(), key },
            (_, Some(_)) => MapOrColumn::Column(flat),
            _ => MapOrColumn::Absent,
        };
        let tag = map_or_column("resource_tags", format!("user_{tag}"), format!("resource_tags_user_{tag}"));
        let product = map_or_column("product", "product_name".into(), "product_product_name".into());

        let mut columns = Vec::new();
        for name in
            [CODE, USAGE_TYPE, COST, START, LINE_TYPE, RESOURCE, UNIT, DESCRIPTION, AMOUNT, PERIOD, ACCOUNT, PRINCIPAL]
                .into_iter()
                .chain(tag.column())
        {
            if let Ok(i) = file_schema.index_of(name) {
                if !columns.contains(&i) {
                    columns.push(i);
                }
            }
        }
        let product_column = product.column().and_then(|c| file_schema.index_of(c).ok());
        let wanted: Vec<usize> = columns.iter().copied().chain(product_column).collect();
        let fields: Vec<Field> = file_schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if wanted.contains(&i) {
                    f.as_ref().clone().with_data_type(as_dictionaries(f.data_type()))
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        let next = Month::parse(&format!("{year:04}-{month:02}")).expect("a parsed period").next();
        let period = (month_start_nanos(year, month), month_start_nanos(next.year(), next.number()));
        Ok(FilePlan {
            reader_schema: Arc::new(Schema::new_with_metadata(fields, file_schema.metadata().clone())),
            columns,
            product_column,
            tag,
            product,
            period,
            keep,
        })
    }

    /// The schema to read the file with (`ArrowReaderOptions::with_schema`).
    pub fn reader_schema(&self) -> SchemaRef {
        self.reader_schema.clone()
    }

    /// Top-level columns to read. The product name is needed only for lines whose product
    /// code is not a first-party one: `all_bedrock` says the row group has no other (from its
    /// statistics), and then it is not read.
    pub fn projection(&self, all_bedrock: bool) -> Vec<usize> {
        let product = if all_bedrock { None } else { self.product_column };
        self.columns.iter().copied().chain(product).collect()
    }
}

/// Whether a row group's product-code statistics prove every line has one first-party Bedrock
/// code.
pub fn all_bedrock(stats: Option<&datafusion::parquet::file::statistics::Statistics>) -> bool {
    let Some(s) = stats else { return false };
    s.null_count_opt() == Some(0)
        && s.min_is_exact()
        && s.max_is_exact()
        && s.min_bytes_opt() == s.max_bytes_opt()
        && BEDROCK_CODES.iter().any(|c| s.min_bytes_opt() == Some(c.as_bytes()))
}

fn month_start_nanos(year: i32, month: u32) -> i64 {
    let d = chrono::NaiveDate::from_ymd_opt(year, month, 1).expect("a valid period");
    d.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp() * 1_000_000_000
}

/// A column's type with its text read as dictionaries: a text column, or a map's text keys
/// and values.
fn as_dictionaries(t: &DataType) -> DataType {
    match t {
        DataType::Utf8 => DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        DataType::Map(entries, sorted) => match entries.data_type() {
            DataType::Struct(kv) => {
                let kv: Vec<Field> =
                    kv.iter().map(|f| f.as_ref().clone().with_data_type(as_dictionaries(f.data_type()))).collect();
                let entries = entries.as_ref().clone().with_data_type(DataType::Struct(kv.into()));
                DataType::Map(Arc::new(entries), *sorted)
            }
            _ => t.clone(),
        },
        _ => t.clone(),
    }
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Id of a string in [`Interner`]; `0` is the empty string.
type Id = u32;
/// The tag of a line without one.
const NO_TAG: Id = Id::MAX;

/// Each distinct string once.
#[derive(Default)]
struct Interner {
    ids: HashMap<Box<str>, Id>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn new() -> Interner {
        let mut i = Interner::default();
        i.id("");
        i
    }

    fn id(&mut self, s: &str) -> Id {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as Id;
        self.names.push(s.into());
        self.ids.insert(s.into(), id);
        id
    }
}

/// How a text value becomes an id: `COALESCE(v, '')`, or the tag's `NULLIF(TRIM(v), '')`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Text {
    Plain,
    Tag,
}

/// A dictionary's values, interned once per column chunk.
#[derive(Default)]
struct DictionaryIds {
    values: Option<ArrayRef>,
    ids: Vec<Id>,
}

/// Group key of one line: day and ten string ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    day: i32,
    text: [Id; KEY_SLOTS],
}

/// The sums of one file's (or row group's) Bedrock lines.
pub struct Groups {
    plan: Arc<FilePlan>,
    strings: Interner,
    /// One per slot: the ten key columns, then map keys and values.
    dictionaries: [DictionaryIds; SLOTS],
    /// Whether the string of an id contains "Amazon Bedrock" (0: not yet known).
    bedrock_name: Vec<u8>,
    sums: FxHashMap<Key, GroupSums>,
    /// Per string id, whether [`KeyFilter`] keeps it as an account, as a principal (0: not yet
    /// known, 1 kept, 2 not).
    kept: [Vec<u8>; 2],
    /// The ids of [`BEDROCK_CODES`].
    bedrock: [Id; 3],
    usage: Id,
    // Per-batch scratch, reused.
    ids: [Vec<Id>; SLOTS],
    keep: Vec<bool>,
    quantity: Vec<i128>,
    cost: Vec<i128>,
}

// Slots of `ids` and `dictionaries`, in `Key::text` order.
const S_LINE_TYPE: usize = 0;
const S_CODE: usize = 1;
const S_USAGE: usize = 2;
const S_RESOURCE: usize = 3;
const S_TAG: usize = 4;
const S_UNIT: usize = 5;
const S_DESCRIPTION: usize = 6;
const S_PRODUCT: usize = 7;
const S_ACCOUNT: usize = 8;
const S_PRINCIPAL: usize = 9;
const KEY_SLOTS: usize = 10;
const S_TAG_KEYS: usize = 10;
const S_TAG_VALUES: usize = 11;
const S_PRODUCT_KEYS: usize = 12;
const S_PRODUCT_VALUES: usize = 13;
const SLOTS: usize = 14;

impl Groups {
    pub fn new(plan: Arc<FilePlan>) -> Groups {
        let mut strings = Interner::new();
        let bedrock = BEDROCK_CODES.map(|c| strings.id(c));
        let usage = strings.id("Usage");
        Groups {
            plan,
            strings,
            dictionaries: Default::default(),
            bedrock_name: Vec::new(),
            sums: FxHashMap::default(),
            kept: Default::default(),
            bedrock,
            usage,
            ids: Default::default(),
            keep: Vec::new(),
            quantity: Vec::new(),
            cost: Vec::new(),
        }
    }

    /// Adds a batch read with the plan's reader schema and projection.
    pub fn add(&mut self, b: &RecordBatch) -> Result<(), String> {
        let n = b.num_rows();
        let col = |name: &str| b.column_by_name(name);
        let plan = self.plan.clone();

        self.text(col(CODE), None, S_CODE, Text::Plain, n)?;
        // Which lines are Bedrock's: the product code, else the product name.
        self.keep.clear();
        self.keep.extend(self.ids[S_CODE].iter().map(|c| self.bedrock.contains(c)));
        let mut products_read = false;
        if self.keep.iter().any(|k| !k) {
            if let Some(product) = plan.product.column().and_then(&col) {
                let key = match &plan.product {
                    MapOrColumn::Map { key, .. } => Some(key.as_str()),
                    _ => None,
                };
                self.text(Some(product), key, S_PRODUCT, Text::Plain, n)?;
                let ids = std::mem::take(&mut self.ids[S_PRODUCT]);
                for (row, &id) in ids.iter().enumerate() {
                    if !self.keep[row] && self.names_bedrock(id) {
                        self.keep[row] = true;
                    }
                }
                self.ids[S_PRODUCT] = ids;
                products_read = true;
            }
        }
        if let Some(period) = col(PERIOD) {
            let ts = timestamps(period)?;
            let (start, end) = plan.period;
            for (row, k) in self.keep.iter_mut().enumerate() {
                *k = *k && ts.is_valid(row) && (start..end).contains(&ts.value(row));
            }
        }
        if !self.keep.iter().any(|k| *k) {
            return Ok(());
        }

        self.text(col(LINE_TYPE), None, S_LINE_TYPE, Text::Plain, n)?;
        self.text(col(USAGE_TYPE), None, S_USAGE, Text::Plain, n)?;
        self.text(col(RESOURCE), None, S_RESOURCE, Text::Plain, n)?;
        let tag_key = match &plan.tag {
            MapOrColumn::Map { key, .. } => Some(key.as_str()),
            _ => None,
        };
        self.text(plan.tag.column().and_then(&col), tag_key, S_TAG, Text::Tag, n)?;
        self.text(col(UNIT), None, S_UNIT, Text::Plain, n)?;
        self.text(col(DESCRIPTION), None, S_DESCRIPTION, Text::Plain, n)?;
        self.text(col(ACCOUNT), None, S_ACCOUNT, Text::Plain, n)?;
        self.text(col(PRINCIPAL), None, S_PRINCIPAL, Text::Plain, n)?;
        self.keep_only(S_ACCOUNT, 0, &|s| plan.keep.accounts.contains(s));
        self.keep_only(S_PRINCIPAL, 1, &|s| plan.keep.principal.as_ref().is_some_and(|re| re.is_match(s)));
        units("line_item_usage_amount", col(AMOUNT), n, &self.keep, &mut self.quantity)?;
        units("line_item_unblended_cost", col(COST), n, &self.keep, &mut self.cost)?;
        let start = timestamps(col(START).expect("a required column"))?;

        for row in 0..n {
            if !self.keep[row] {
                continue;
            }
            if !start.is_valid(row) {
                return Err(format!("a Bedrock line (row {row} of a batch) has no {START}"));
            }
            let day = start.value(row).div_euclid(NANOS_PER_DAY) as i32;
            let line_type = self.ids[S_LINE_TYPE][row];
            let description = if line_type == self.usage { 0 } else { self.ids[S_DESCRIPTION][row] };
            let code = self.ids[S_CODE][row];
            let product = if products_read && !self.bedrock.contains(&code) { self.ids[S_PRODUCT][row] } else { 0 };
            let key = Key {
                day,
                text: [
                    line_type,
                    code,
                    self.ids[S_USAGE][row],
                    self.ids[S_RESOURCE][row],
                    self.ids[S_TAG][row],
                    self.ids[S_UNIT][row],
                    description,
                    product,
                    self.ids[S_ACCOUNT][row],
                    self.ids[S_PRINCIPAL][row],
                ],
            };
            let g = self.sums.entry(key).or_default();
            g.quantity += self.quantity[row];
            g.cost += self.cost[row];
            g.lines += 1;
        }
        Ok(())
    }

    /// The groups with their strings.
    pub fn into_keys(self) -> Vec<(GroupKey, GroupSums)> {
        let name = |id: Id| self.strings.names[id as usize].to_string();
        self.sums
            .iter()
            .map(|(k, sums)| {
                let key = GroupKey {
                    day: crate::tables::date32_label(k.day),
                    line_item_type: name(k.text[S_LINE_TYPE]),
                    product_code: name(k.text[S_CODE]),
                    usage_type: name(k.text[S_USAGE]),
                    resource: name(k.text[S_RESOURCE]),
                    tag: (k.text[S_TAG] != NO_TAG).then(|| name(k.text[S_TAG])),
                    pricing_unit: name(k.text[S_UNIT]),
                    description: name(k.text[S_DESCRIPTION]),
                    product_name: name(k.text[S_PRODUCT]),
                    account: name(k.text[S_ACCOUNT]),
                    principal: name(k.text[S_PRINCIPAL]),
                };
                (key, *sums)
            })
            .collect()
    }

    /// Turns the ids of `slot` that `keep` refuses into the empty string's, deciding once per
    /// distinct string.
    fn keep_only(&mut self, slot: usize, which: usize, keep: &dyn Fn(&str) -> bool) {
        let (ids, cache, names) = (&mut self.ids[slot], &mut self.kept[which], &self.strings.names);
        for id in ids.iter_mut() {
            let i = *id as usize;
            if i == 0 {
                continue;
            }
            if cache.len() <= i {
                cache.resize(names.len().max(i + 1), 0);
            }
            if cache[i] == 0 {
                cache[i] = if keep(&names[i]) { 1 } else { 2 };
            }
            if cache[i] == 2 {
                *id = 0;
            }
        }
    }

    /// Whether a product name (by id) contains "Amazon Bedrock".
    fn names_bedrock(&mut self, id: Id) -> bool {
        let i = id as usize;
        if self.bedrock_name.len() <= i {
            self.bedrock_name.resize(self.strings.names.len().max(i + 1), 0);
        }
        if self.bedrock_name[i] == 0 {
            self.bedrock_name[i] = if self.strings.names[i].contains("Amazon Bedrock") { 1 } else { 2 };
        }
        self.bedrock_name[i] == 1
    }

    /// Fills `self.ids[slot]` with one id per row of `column` (`column[map_key]` for a map);
    /// a missing column is all NULL.
    fn text(
        &mut self,
        column: Option<&ArrayRef>,
        map_key: Option<&str>,
        slot: usize,
        how: Text,
        n: usize,
    ) -> Result<(), String> {
        let mut out = std::mem::take(&mut self.ids[slot]);
        out.clear();
        match (column, map_key) {
            (None, _) => out.resize(n, null_id(how)),
            (Some(column), None) => {
                element_ids(&mut self.strings, &mut self.dictionaries[slot], column, how, &mut out)?
            }
            (Some(column), Some(key)) => {
                let map = column.as_map_opt().ok_or_else(|| format!("expected a map, found {}", column.data_type()))?;
                let (key_slot, value_slot) =
                    if slot == S_TAG { (S_TAG_KEYS, S_TAG_VALUES) } else { (S_PRODUCT_KEYS, S_PRODUCT_VALUES) };
                let mut keys = std::mem::take(&mut self.ids[key_slot]);
                let mut values = std::mem::take(&mut self.ids[value_slot]);
                element_ids(&mut self.strings, &mut self.dictionaries[key_slot], map.keys(), Text::Plain, &mut keys)?;
                element_ids(&mut self.strings, &mut self.dictionaries[value_slot], map.values(), how, &mut values)?;
                let wanted = self.strings.id(key);
                let offsets = map.value_offsets();
                out.extend((0..map.len()).map(|row| {
                    let entries = offsets[row] as usize..offsets[row + 1] as usize;
                    match map.is_valid(row) {
                        true => entries.into_iter().find(|&j| keys[j] == wanted).map_or(null_id(how), |j| values[j]),
                        false => null_id(how),
                    }
                }));
                self.ids[key_slot] = keys;
                self.ids[value_slot] = values;
            }
        }
        self.ids[slot] = out;
        Ok(())
    }
}

/// The id of NULL.
fn null_id(how: Text) -> Id {
    if how == Text::Tag {
        NO_TAG
    } else {
        0
    }
}

/// One id per element of a text array: a dictionary's values are interned once per column
/// chunk, other text one value at a time (remembering the last: CUR lines come in runs).
fn element_ids(
    strings: &mut Interner,
    cache: &mut DictionaryIds,
    array: &ArrayRef,
    how: Text,
    out: &mut Vec<Id>,
) -> Result<(), String> {
    out.clear();
    if let Some(dict) = array.as_dictionary_opt::<Int32Type>() {
        let values = dict.values();
        if !cache.values.as_ref().is_some_and(|v| same_values(v, values)) {
            let text = utf8(values)?;
            let ids = text.as_string::<i32>().iter().map(|v| intern(strings, v, how)).collect();
            *cache = DictionaryIds { values: Some(values.clone()), ids };
        }
        let ids = &cache.ids;
        let keys = dict.keys();
        if keys.null_count() == 0 {
            out.extend(keys.values().iter().map(|&k| ids[k as usize]));
        } else {
            out.extend(keys.iter().map(|k| k.map_or(null_id(how), |k| ids[k as usize])));
        }
        return Ok(());
    }
    let text = utf8(array)?;
    let mut last: Option<(&str, Id)> = None;
    for v in text.as_string::<i32>().iter() {
        let id = match (last, v) {
            (_, None) => null_id(how),
            (Some((s, id)), Some(v)) if s == v => id,
            (_, Some(v)) => {
                let id = intern(strings, Some(v), how);
                last = Some((v, id));
                id
            }
        };
        out.push(id);
    }
    Ok(())
}

fn intern(strings: &mut Interner, v: Option<&str>, how: Text) -> Id {
    match (v, how) {
        (None, Text::Plain) => 0,
        (None, Text::Tag) => NO_TAG,
        (Some(v), Text::Plain) => strings.id(v),
        (Some(v), Text::Tag) => match v.trim_matches(' ') {
            "" => NO_TAG,
            t => strings.id(t),
        },
    }
}

/// Whether two dictionaries are the same values (the reader hands out one per column chunk).
fn same_values(a: &ArrayRef, b: &ArrayRef) -> bool {
    if Arc::ptr_eq(a, b) {
        return true;
    }
    match (a.as_string_opt::<i32>(), b.as_string_opt::<i32>()) {
        (Some(a), Some(b)) => {
            a.len() == b.len()
                && a.values().as_ptr() == b.values().as_ptr()
                && a.offsets().as_ptr() == b.offsets().as_ptr()
        }
        _ => false,
    }
}

fn cast_options() -> CastOptions<'static> {
    // As SQL's CAST: a value that does not convert is an error, not a NULL.
    CastOptions { safe: false, format_options: FormatOptions::default() }
}

fn arrow_err(e: ArrowError) -> String {
    e.to_string()
}

/// A column as `Utf8` (a copy only when it is another type).
fn utf8(column: &ArrayRef) -> Result<ArrayRef, String> {
    if column.data_type() == &DataType::Utf8 {
        return Ok(column.clone());
    }
    cast_with_options(column, &DataType::Utf8, &cast_options()).map_err(arrow_err)
}

/// A date or time column as `CAST(column AS TIMESTAMP)` (nanoseconds, UTC).
fn timestamps(column: &ArrayRef) -> Result<datafusion::arrow::array::PrimitiveArray<TimestampNanosecondType>, String> {
    let ts = cast_with_options(column, &DataType::Timestamp(TimeUnit::Nanosecond, None), &cast_options())
        .map_err(arrow_err)?;
    Ok(ts.as_primitive::<TimestampNanosecondType>().clone())
}

/// The largest amount or cost one CUR line may hold: a trillion. Anything above is a broken
/// export, not a bill, and would only hide as a rounding of everything else.
const MAX_LINE_UNITS: i128 = 1_000_000_000_000 * 10_000_000_000;

/// A money or quantity column (named `name`) as units of 10⁻¹⁰, NULL as 0 (the sum of no
/// values). A kept row (`keep`) holding NaN, an infinity or more than ±10¹² is an error naming
/// the column and row: read as 0 it would leave the run balanced and the bill wrong.
fn units(name: &str, column: Option<&ArrayRef>, n: usize, keep: &[bool], out: &mut Vec<i128>) -> Result<(), String> {
    out.clear();
    let Some(column) = column else {
        out.resize(n, 0);
        return Ok(());
    };
    let bad = |row: usize, v: &dyn std::fmt::Display| {
        format!("column `{name}`, row {row}: {v} is not a finite amount within ±10¹²")
    };
    match column.data_type() {
        DataType::Float64 | DataType::Float32 | DataType::Float16 => {
            let doubles = cast_with_options(column, &DataType::Float64, &cast_options()).map_err(arrow_err)?;
            let doubles = doubles.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
            for (row, v) in doubles.iter().enumerate() {
                let u = match v {
                    None => 0,
                    Some(v) => match money::to_units_f64(v).filter(|u| u.abs() <= MAX_LINE_UNITS) {
                        Some(u) => u,
                        None if keep.get(row).copied().unwrap_or(true) => return Err(bad(row, &v)),
                        None => 0,
                    },
                };
                out.push(u);
            }
        }
        _ => {
            let decimals = cast_with_options(column, &money::arrow_type(), &cast_options()).map_err(arrow_err)?;
            let decimals = decimals.as_primitive::<datafusion::arrow::datatypes::Decimal128Type>();
            for (row, v) in decimals.iter().enumerate() {
                let u = v.unwrap_or(0);
                if u.abs() > MAX_LINE_UNITS && keep.get(row).copied().unwrap_or(true) {
                    return Err(bad(row, &money::from_units(u)));
                }
                out.push(u);
            }
        }
    }
    Ok(())
}
