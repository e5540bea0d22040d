//! Real applications that depend on locks and exact metadata: sqlite with
//! writers on two mounts and on the server, git clone, a C build with make, rsync.

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

fn sqlite_with_writers_on_two_mounts_and_the_server_stays_intact() {
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
    // Two mounts, and a local process on the server's own copy.
    let a = spawn(&db_a, "a");
    let b = spawn(&db_b, "b");
    let local = spawn(&f.e("shared.db"), "local");
    for (who, child) in [("a", a), ("b", b), ("local", local)] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "writer {who} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let check = "import sqlite3,sys\ncon=sqlite3.connect(sys.argv[1])\nprint(con.execute('PRAGMA integrity_check').fetchone()[0])\nprint(con.execute(\"SELECT count(*), count(DISTINCT who || '-' || n) FROM t\").fetchone())\n";
    let expected = format!("ok\n({}, {})", 3 * ROWS, 3 * ROWS);
    // Through either mount and on the server's disk.
    assert_eq!(python_sqlite(check, &[db_a.to_str().unwrap()]), expected);
    assert_eq!(python_sqlite(check, &[db_b.to_str().unwrap()]), expected);
    assert_eq!(
        python_sqlite(check, &[f.e("shared.db").to_str().unwrap()]),
        expected
    );
}

fn git(dir: &Path, args: &[&str]) -> String {
    run(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=ferry",
            "-c",
            "user.email=ferry@example.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args))
}

fn git_clone_into_the_mount_then_commit_gc_fsck() {
    let f = fixture!();
    // A local repository with some history and a branch.
    let origin = f.temp().join("origin");
    fs::create_dir(&origin).unwrap();
    git(&origin, &["init", "-q"]);
    for round in 0..5 {
        for i in 0..20 {
            fs::write(
                origin.join(format!("file{i}.txt")),
                format!("round {round} file {i}\n").repeat(50),
            )
            .unwrap();
        }
        git(&origin, &["add", "-A"]);
        git(&origin, &["commit", "-q", "-m", &format!("round {round}")]);
    }
    git(&origin, &["branch", "feature"]);
    // Cloned as git does locally (objects copied or hard linked) and as over a
    // network (a pack file sent and indexed).
    for (name, extra) in [("local", None), ("packed", Some("--no-local"))] {
        let mut args = vec!["clone", "-q"];
        args.extend(extra);
        let dest = f.m(name);
        let (src, dst) = (origin.to_str().unwrap(), dest.to_str().unwrap());
        args.extend([src, dst]);
        git(f.temp(), &args);
        assert_eq!(git(&dest, &["log", "--oneline"]).lines().count(), 5);
        assert!(git(&dest, &["branch", "-a"]).contains("origin/feature"));
        fs::write(dest.join("file0.txt"), "changed in the mount\n").unwrap();
        git(&dest, &["commit", "-q", "-am", "from the mount"]);
        assert_eq!(git(&dest, &["status", "--porcelain"]), "");
        git(&dest, &["gc", "-q", "--aggressive"]);
        git(&dest, &["fsck", "--full", "--strict"]);
        assert_eq!(git(&dest, &["log", "--oneline"]).lines().count(), 6);
        // The server's copy is the same valid repository.
        git(&f.e(name), &["fsck", "--full"]);
        assert_eq!(
            git(&f.e(name), &["rev-parse", "HEAD"]),
            git(&dest, &["rev-parse", "HEAD"])
        );
    }
}

/// A small C program in several files with a Makefile.
fn write_c_project(dir: &Path) {
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::write(
        dir.join("Makefile"),
        "CFLAGS ?= -O1 -Wall -Werror\n\
         OBJS = src/main.o src/greet.o src/sum.o\n\
         hello: $(OBJS)\n\t$(CC) $(CFLAGS) -o $@ $(OBJS)\n\
         src/%.o: src/%.c src/lib.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n\
         clean:\n\trm -f hello $(OBJS)\n",
    )
    .unwrap();
    fs::write(
        dir.join("src/lib.h"),
        "#ifndef LIB_H\n#define LIB_H\nvoid greet(const char *who);\nlong sum(int n);\n#endif\n",
    )
    .unwrap();
    fs::write(
        dir.join("src/greet.c"),
        "#include <stdio.h>\n#include \"lib.h\"\nvoid greet(const char *who) { printf(\"hello, %s\\n\", who); }\n",
    )
    .unwrap();
    fs::write(
        dir.join("src/sum.c"),
        "#include \"lib.h\"\nlong sum(int n) { long s = 0; for (int i = 1; i <= n; i++) s += i; return s; }\n",
    )
    .unwrap();
    fs::write(
        dir.join("src/main.c"),
        "#include <stdio.h>\n#include \"lib.h\"\nint main(void) { greet(\"ferry\"); printf(\"%ld\\n\", sum(100)); return 0; }\n",
    )
    .unwrap();
}

fn untar_and_build_a_c_project_in_the_mount() {
    let f = fixture!();
    let project = f.temp().join("hello-1.0");
    write_c_project(&project);
    let tarball = f.temp().join("hello-1.0.tar.gz");
    run(Command::new("tar")
        .arg("-C")
        .arg(f.temp())
        .arg("-czf")
        .arg(&tarball)
        .arg("hello-1.0"));
    run(Command::new("tar")
        .arg("-C")
        .arg(&f.mnt)
        .arg("-xzf")
        .arg(&tarball));
    let dir = f.m("hello-1.0");
    run(Command::new("make").arg("-C").arg(&dir).arg("-j2"));
    let out = run(&mut Command::new(dir.join("hello")));
    assert_eq!(out, "hello, ferry\n5050\n");
    // Up to date now: make decides from mtimes, which must round-trip exactly.
    run(Command::new("make").arg("-C").arg(&dir).arg("-q"));
    // A changed header rebuilds what depends on it.
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(
        dir.join("src/lib.h"),
        "#ifndef LIB_H\n#define LIB_H\nvoid greet(const char *who);\nlong sum(int n);\n#define UNUSED 1\n#endif\n",
    )
    .unwrap();
    let rebuilt = run(Command::new("make").arg("-C").arg(&dir));
    assert!(rebuilt.contains("main.o"), "{rebuilt}");
    run(Command::new("make").arg("-C").arg(&dir).arg("-q"));
    run(Command::new("make").arg("-C").arg(&dir).arg("clean"));
    assert!(!f.e("hello-1.0/hello").exists());
}

fn rsync_into_the_mount_then_nothing_left_to_do() {
    let f = fixture!();
    let src = f.temp().join("src");
    run(Command::new("cp")
        .arg("-a")
        .arg("/usr/include/linux")
        .arg(&src));
    // Odd modes, a symlink, an empty directory, an empty file and a time with
    // nanoseconds.
    fs::create_dir(src.join("empty-dir")).unwrap();
    fs::write(src.join("private"), b"secret").unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    run(Command::new("chmod").arg("600").arg(src.join("private")));
    std::os::unix::fs::symlink("private", src.join("link")).unwrap();
    run(Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06.123456789"])
        .arg(src.join("empty")));
    let rsync = |extra: &[&str]| {
        run(Command::new("rsync")
            .arg("-a")
            .args(extra)
            .arg(format!("{}/", src.display()))
            .arg(format!("{}/", f.m("dst").display())))
    };
    rsync(&[]);
    let again = rsync(&["--itemize-changes"]);
    assert_eq!(again, "", "the second rsync found work to do");
    // A change is found and carried over, and then nothing again.
    fs::write(src.join("private"), b"changed").unwrap();
    let changed = rsync(&["--itemize-changes"]);
    assert!(changed.contains("private"), "{changed}");
    assert_eq!(rsync(&["--itemize-changes"]), "");
    run(Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&src)
        .arg(f.e("dst")));
}

tests! {
    sqlite_with_writers_on_two_mounts_and_the_server_stays_intact => [Fuse],
    git_clone_into_the_mount_then_commit_gc_fsck => [Fuse],
    untar_and_build_a_c_project_in_the_mount => [Fuse],
    rsync_into_the_mount_then_nothing_left_to_do => [Fuse],
}
