//! Shared by the invoice tests: JSON Schema validation of exported documents (with `boon`, a
//! draft 2020-12 validator), against the schema `tally schema invoice` prints.
#![allow(dead_code)]

/// A compiled schema.
pub struct Validator {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl Validator {
    pub fn new(schema: &serde_json::Value) -> Validator {
        let url = schema["$id"].as_str().unwrap_or("invoice.schema.json");
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        compiler.add_resource(url, schema.clone()).unwrap_or_else(|e| panic!("schema: {e}"));
        let index = compiler.compile(url, &mut schemas).unwrap_or_else(|e| panic!("schema: {e}"));
        Validator { schemas, index }
    }

    /// The document against the schema; the error lists every violation.
    pub fn check(&self, doc: &serde_json::Value) -> Result<(), String> {
        self.schemas.validate(doc, self.index).map_err(|e| format!("{e:#}"))
    }
}

/// Validates against the library's schema.
pub fn validate(doc: &serde_json::Value) -> Result<(), String> {
    Validator::new(&tally::invoice::export::json_schema()).check(doc)
}
