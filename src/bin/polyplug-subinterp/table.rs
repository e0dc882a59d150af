//! Plain, aligned tables for stdout (no borders, no colour: the output is read by
//! scripts and tests/cli.rs as well as by people).

use comfy_table::{presets, CellAlignment, Table};

/// Spaces between columns.
const GAP: u16 = 3;

/// A borderless table with `header`; the columns listed in `right` are right-aligned
/// (numbers). Print it with [`render`].
pub fn plain(header: &[&str], right: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING).set_header(header.to_vec());
    let last = header.len().saturating_sub(1);
    for (i, col) in t.column_iter_mut().enumerate() {
        col.set_padding((0, if i == last { 0 } else { GAP }));
        if right.contains(&i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// The table's lines without trailing blanks.
pub fn render(t: &Table) -> String {
    t.trim_fmt()
}
