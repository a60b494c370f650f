//! `benchtable results.jsonl`: prints the markdown comparison table of a compare run.

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: benchtable FILE.jsonl"))?;
    let lines = std::fs::read_to_string(&path)?;
    print!("{}", ringcast_bench::table::render(&lines));
    Ok(())
}
