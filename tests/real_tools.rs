//! Real programs on a real mount: cp, diff, tar, git, ls.

mod common;

use common::run;
use std::fs;
use std::path::Path;
use std::process::Command;

/// A real tree with a few thousand files: /usr/include where it exists.
fn source_tree() -> &'static Path {
    let p = Path::new("/usr/include");
    assert!(
        p.is_dir(),
        "/usr/include is needed as a real tree (apt-get install libc6-dev)"
    );
    p
}

fn copy_a_real_tree_in_and_out_byte_for_byte() {
    let f = fixture!();
    let src = source_tree();
    run(Command::new("cp").arg("-a").arg(src).arg(f.m("include")));
    let files = run(Command::new("find")
        .arg(f.m("include"))
        .args(["-type", "f"]));
    assert!(
        files.lines().count() > 2000,
        "expected thousands of files, got {}",
        files.lines().count()
    );
    // Byte for byte, symlinks compared as links, on the mount and on the server's disk.
    run(Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(src)
        .arg(f.m("include")));
    run(Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(src)
        .arg(f.e("include")));
    // and back out of the mount
    let out = f.temp().join("out");
    run(Command::new("cp").arg("-a").arg(f.m("include")).arg(&out));
    run(Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(src)
        .arg(&out));
    run(Command::new("rm").arg("-rf").arg(f.m("include")));
    common::fsync_dir(&f.m(""));
    assert!(!f.e("include").exists());
}

fn tar_extract_and_create() {
    let f = fixture!();
    let archive = f.temp().join("tree.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg("/usr/include")
        .arg("-cf")
        .arg(&archive)
        .args(["linux", "asm-generic"]));
    run(Command::new("tar")
        .arg("-C")
        .arg(&f.mnt)
        .arg("-xpf")
        .arg(&archive));
    let listing = |dir: &Path| {
        run(Command::new("sh").arg("-c").arg(format!(
            "cd {} && tar --sort=name --mtime=@0 --owner=0 --group=0 -cf - linux asm-generic | md5sum",
            dir.display()
        )))
    };
    assert_eq!(listing(&f.mnt), listing(Path::new("/usr/include")));
    // mtimes survive (tar sets them with utimensat)
    let a = fs::metadata("/usr/include/linux/fs.h")
        .unwrap()
        .modified()
        .unwrap();
    let b = fs::metadata(f.m("linux/fs.h")).unwrap().modified().unwrap();
    assert_eq!(a, b);
}

fn git_init_add_commit_status_log() {
    let f = fixture!();
    let repo = f.m("repo");
    fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        run(Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args([
                "-c",
                "user.name=ferry",
                "-c",
                "user.email=ferry@example.invalid",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args))
    };
    git(&["init", "-q"]);
    fs::write(repo.join("README"), "hello\n").unwrap();
    fs::create_dir(repo.join("src")).unwrap();
    for i in 0..30 {
        fs::write(
            repo.join(format!("src/m{i}.rs")),
            format!("pub fn f{i}() {{}}\n"),
        )
        .unwrap();
    }
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "first"]);
    fs::write(repo.join("README"), "hello again\n").unwrap();
    assert!(git(&["status", "--porcelain"]).contains("M README"));
    git(&["commit", "-q", "-am", "second"]);
    assert_eq!(git(&["status", "--porcelain"]), "");
    assert_eq!(git(&["log", "--oneline"]).lines().count(), 2);
    git(&["gc", "-q"]);
    git(&["fsck", "--full"]);
    // the server's copy is a valid repository too
    run(Command::new("git")
        .arg("-C")
        .arg(f.e("repo"))
        .args(["fsck", "--full"]));
}

fn editors_save_by_writing_a_temp_file_and_renaming() {
    let f = fixture!();
    fs::write(f.m("doc.txt"), "draft 1\n").unwrap();
    // what vim and most editors do: write a new file, fsync, rename over the old one
    run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && printf 'draft 2\\n' > .doc.txt.swp && sync .doc.txt.swp && mv .doc.txt.swp doc.txt && cat doc.txt",
        f.mnt.display()
    )));
    assert_eq!(fs::read_to_string(f.e("doc.txt")).unwrap(), "draft 2\n");
    // sed -i does the same dance
    run(Command::new("sed")
        .args(["-i", "s/draft/final/"])
        .arg(f.m("doc.txt")));
    assert_eq!(fs::read_to_string(f.m("doc.txt")).unwrap(), "final 2\n");
}

tests! {
    copy_a_real_tree_in_and_out_byte_for_byte => [Fuse],
    tar_extract_and_create => [Fuse],
    git_init_add_commit_status_log => [Fuse],
    editors_save_by_writing_a_temp_file_and_renaming => [Fuse],
}
