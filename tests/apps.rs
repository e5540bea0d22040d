//! Real applications that depend on locks and exact metadata: sqlite with two
//! writers on two mounts, git clone, a C build with make, rsync.

mod common;

use common::{run, Setup};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

/// Inserts rows in transactions of ten, each checking that it sees every row it
/// wrote before (a stale cache would not), with a generous busy timeout.
const SQLITE_WRITER: &str = r#"
import sqlite3, sys
db, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = sqlite3.connect(db, timeout=120, isolation_level=None)
mine = 0
for i in range(n // 10):
    con.execute("BEGIN IMMEDIATE")
    seen = con.execute("SELECT count(*) FROM t WHERE who = ?", (who,)).fetchone()[0]
    if seen != mine:
        sys.exit(f"{who} sees {seen} of its own rows, wrote {mine}")
    for j in range(10):
        con.execute("INSERT INTO t(who, n, pad) VALUES (?, ?, ?)", (who, mine, "x" * 300))
        mine += 1
    con.execute("COMMIT")
print("done")
"#;

fn python_sqlite(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 (with its sqlite3 module) is needed");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn sqlite_with_two_writers_on_two_mounts_stays_intact() {
    let mut f = fixture!();
    let other = f.second_mount("mnt2", Setup::default());
    let db_a = f.m("shared.db");
    let db_b = other.join("shared.db");
    python_sqlite(
        "import sqlite3,sys\ncon=sqlite3.connect(sys.argv[1])\ncon.execute('CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT, n INTEGER, pad TEXT)')\ncon.commit()\n",
        &[db_a.to_str().unwrap()],
    );
    const ROWS: usize = 400;
    let spawn = |db: &Path, who: &str| {
        Command::new("python3")
            .arg("-c")
            .arg(SQLITE_WRITER)
            .arg(db)
            .arg(who)
            .arg(ROWS.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 is needed")
    };
    let a = spawn(&db_a, "a");
    let b = spawn(&db_b, "b");
    for (who, child) in [("a", a), ("b", b)] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "writer {who} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let check = "import sqlite3,sys\ncon=sqlite3.connect(sys.argv[1])\nprint(con.execute('PRAGMA integrity_check').fetchone()[0])\nprint(con.execute(\"SELECT count(*), count(DISTINCT who || '-' || n) FROM t\").fetchone())\n";
    let expected = format!("ok\n({}, {})", 2 * ROWS, 2 * ROWS);
    // Through either mount and on the server's disk.
    assert_eq!(python_sqlite(check, &[db_a.to_str().unwrap()]), expected);
    assert_eq!(python_sqlite(check, &[db_b.to_str().unwrap()]), expected);
    assert_eq!(
        python_sqlite(check, &[f.e("shared.db").to_str().unwrap()]),
        expected
    );
}
