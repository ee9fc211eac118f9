//! The fixture generators: `tally generate` (invocation logs) and `tally generate-cur` (the CUR
//! that bills them).

use tally::generate::cur::CurSpec;
use tally::generate::Spec;

use crate::args::{GenerateArgs, GenerateCurArgs};
use crate::print;

/// `tally generate`.
pub fn logs(args: GenerateArgs) -> anyhow::Result<u8> {
    let spec = Spec {
        out: args.out,
        tenants: args.tenants,
        records: args.records,
        month: args.month,
        seed: args.seed,
        body_bytes: args.body_bytes,
        plain_fraction: args.plain_fraction,
        duplicate_fraction: args.duplicate_fraction,
        records_per_object: args.records_per_object,
        hours: args.hours,
        ..Spec::default()
    };
    let summary = tally::generate::generate(&spec)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print::generated(&summary);
    }
    Ok(0)
}

/// `tally generate-cur`.
pub fn cur(args: GenerateCurArgs) -> anyhow::Result<u8> {
    let out = args.out.unwrap_or_else(|| args.fixtures.join("cur"));
    let spec = CurSpec {
        tenant_tag: args.tag,
        drift: args.drift,
        lines: args.lines,
        rows_per_file: args.rows_per_file,
        seed: args.seed,
        ..CurSpec::new(args.fixtures, out, args.month)
    };
    let summary = tally::generate::cur::generate(&spec)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print::generated_cur(&summary, &spec.month);
    }
    Ok(0)
}
