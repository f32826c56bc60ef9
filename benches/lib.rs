//! Shared helpers for the benchmarks; the benches themselves live beside this file.

/// Reads `--name N` pairs from the command line (after `cargo bench -- …`) into `counts`,
/// whose entries start at their defaults. `--bench`, which `cargo bench` passes, is skipped;
/// anything else is an error worth hearing about (a typo would silently run the defaults).
pub fn count_args(counts: &mut [(&str, &mut usize)]) -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--bench" {
            continue;
        }
        let name = arg.strip_prefix("--").unwrap_or(&arg);
        let Some((_, slot)) = counts.iter_mut().find(|(n, _)| *n == name) else {
            return Err(format!("unknown argument {arg:?}"));
        };
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        **slot = value
            .parse()
            .map_err(|_| format!("{arg}: {value:?} is not a number"))?;
    }
    Ok(())
}
