use super::PortRow;
use super::*;
use crate::{ids, timefmt};

fn file(p: &str) -> StoredFile {
    StoredFile {
        rel_path: p.into(),
        size: 10,
        sha256: "ab".into(),
    }
}

fn kernel(name: &str) -> KernelRow {
    KernelRow {
        id: ids::new_id(),
        name: name.into(),
        owner_uid: 0,
        format: "elf".into(),
        release: None,
        vmlinux: file("kernels/x/vmlinux"),
        initrd: None,
        created_at: timefmt::now(),
    }
}

fn image(name: &str, kernel_id: &str, owner: u32) -> ImageRow {
    ImageRow {
        id: ids::new_id(),
        name: name.into(),
        owner_uid: owner,
        kernel_id: kernel_id.into(),
        rootfs: file("images/x/rootfs.ext4"),
        work_seed: Some(file("images/x/work-seed.ext4")),
        created_at: timefmt::now(),
        features: vec!["ssh".into()],
    }
}

fn vm(name: &str, img: &ImageRow) -> VmRow {
    VmRow {
        id: ids::new_id(),
        name: name.into(),
        owner_uid: 0,
        image_id: img.id.clone(),
        kernel_id: img.kernel_id.clone(),
        state: "stopped".into(),
        spec: "{}".into(),
        runtime: "{}".into(),
        created_at: timefmt::now(),
        updated_at: timefmt::now(),
    }
}

#[test]
fn migrates_once_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let s = Store::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), migrations::LATEST);
    let k = kernel("k1");
    s.insert_kernel(&k).unwrap();
    drop(s);
    let s = Store::open(&path).unwrap();
    assert_eq!(s.kernel_by_name("k1").unwrap(), Some(k));
    assert!(s.integrity_problems().unwrap().is_empty());
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(Store::open(&path).unwrap());
    let c = rusqlite::Connection::open(&path).unwrap();
    c.pragma_update(None, "user_version", migrations::LATEST + 1)
        .unwrap();
    drop(c);
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::NewerSchema { .. })
    ));
    assert!(matches!(
        Store::open_read_only(&path),
        Err(StoreError::NewerSchema { .. })
    ));
}

#[test]
fn read_only_open_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    Store::open(&path)
        .unwrap()
        .insert_kernel(&kernel("k1"))
        .unwrap();
    let ro = Store::open_read_only(&path).unwrap();
    assert_eq!(ro.list_kernels().unwrap().len(), 1);
    assert!(ro.insert_kernel(&kernel("k2")).is_err());
}

#[test]
fn names_are_unique() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.db")).unwrap();
    s.insert_kernel(&kernel("k")).unwrap();
    let e = s.insert_kernel(&kernel("k")).unwrap_err();
    assert!(
        matches!(e, StoreError::AlreadyExists { what: "kernel", .. }),
        "{e}"
    );
}

#[test]
fn image_needs_an_existing_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.db")).unwrap();
    let e = s.insert_image(&image("i", "nope", 0)).unwrap_err();
    assert!(
        matches!(e, StoreError::NotFound { what: "kernel", .. }),
        "{e}"
    );
}

#[test]
fn in_use_objects_cannot_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.db")).unwrap();
    let k = kernel("k");
    s.insert_kernel(&k).unwrap();
    let i = image("img", &k.id, 0);
    s.insert_image(&i).unwrap();
    let v = vm("box", &i);
    s.insert_vm(&v).unwrap();

    match s.delete_kernel(&k.id).unwrap_err() {
        StoreError::InUse { users, .. } => assert_eq!(users, ["image img", "vm box"]),
        e => panic!("{e}"),
    }
    match s.delete_image(&i.id).unwrap_err() {
        StoreError::InUse { users, .. } => assert_eq!(users, ["vm box"]),
        e => panic!("{e}"),
    }
    s.delete_vm(&v.id).unwrap();
    s.delete_image(&i.id).unwrap();
    s.delete_kernel(&k.id).unwrap();
    assert!(s.list_kernels().unwrap().is_empty());
}

#[test]
fn defaults_fall_back_to_root() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.db")).unwrap();
    let k = kernel("k");
    s.insert_kernel(&k).unwrap();
    let root_img = image("shared", &k.id, 0);
    let user_img = image("mine", &k.id, 1000);
    s.insert_image(&root_img).unwrap();
    s.insert_image(&user_img).unwrap();
    assert_eq!(s.default_image_for(1000).unwrap(), None);
    s.set_default_image(0, &root_img.id).unwrap();
    assert_eq!(
        s.default_image_for(1000).unwrap(),
        Some(root_img.id.clone())
    );
    s.set_default_image(1000, &user_img.id).unwrap();
    assert_eq!(
        s.default_image_for(1000).unwrap(),
        Some(user_img.id.clone())
    );
    assert_eq!(s.default_image_for(0).unwrap(), Some(root_img.id.clone()));
    // Deleting the user's image drops its default; root's shows through again.
    s.delete_image(&user_img.id).unwrap();
    assert_eq!(s.default_image_for(1000).unwrap(), Some(root_img.id));
}

#[test]
fn running_operations_fail_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.db")).unwrap();
    let op = OperationRow {
        id: "op1".into(),
        kind: "image.register".into(),
        target: "x".into(),
        owner_uid: 0,
        state: "running".into(),
        stage: "copy".into(),
        stages: "[]".into(),
        progress: None,
        result: None,
        error: None,
        created_at: timefmt::now(),
        finished_at: None,
        revision: 3,
    };
    s.put_operation(&op).unwrap();
    let cut = s
        .fail_running_operations("{\"message\":\"x\"}", &timefmt::now())
        .unwrap();
    assert_eq!(cut.len(), 1);
    let after = s.operation("op1").unwrap().unwrap();
    assert_eq!(after.state, "failed");
    assert_eq!(after.revision, 4);
    assert!(after.finished_at.is_some());
    assert!(s
        .fail_running_operations("{}", &timefmt::now())
        .unwrap()
        .is_empty());
}

#[test]
fn vm_transitions_are_compare_and_set() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.db")).unwrap();
    let k = kernel("k");
    s.insert_kernel(&k).unwrap();
    let i = image("img", &k.id, 0);
    s.insert_image(&i).unwrap();
    let v = vm("box", &i);
    s.insert_vm(&v).unwrap();

    match s
        .transition_vm(&v.id, &["stopped"], "starting", |r| {
            r.runtime = "{\"x\":1}".into()
        })
        .unwrap()
    {
        Transition::Done(r) => {
            assert_eq!(r.state, "starting");
            assert_eq!(r.runtime, "{\"x\":1}");
        }
        t => panic!("{t:?}"),
    }
    // A second claim from the same state fails and reports what it found.
    match s
        .transition_vm(&v.id, &["stopped"], "starting", |_| panic!("not applied"))
        .unwrap()
    {
        Transition::WrongState(r) => assert_eq!(r.state, "starting"),
        t => panic!("{t:?}"),
    }
    assert_eq!(
        s.transition_vm("nope", &["stopped"], "x", |_| {}).unwrap(),
        Transition::Missing
    );
    let r = s
        .update_vm(&v.id, |r| r.spec = "{\"vcpus\":2}".into())
        .unwrap()
        .unwrap();
    assert_eq!(r.state, "starting");
    assert_eq!(s.vm_by_id(&v.id).unwrap().unwrap().spec, "{\"vcpus\":2}");
}

#[test]
fn concurrent_claims_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(Store::open(&dir.path().join("s.db")).unwrap());
    let k = kernel("k");
    s.insert_kernel(&k).unwrap();
    let i = image("img", &k.id, 0);
    s.insert_image(&i).unwrap();
    let v = vm("box", &i);
    s.insert_vm(&v).unwrap();
    let wins: usize = (0..16)
        .map(|_| {
            let s = s.clone();
            let id = v.id.clone();
            std::thread::spawn(move || {
                matches!(
                    s.transition_vm(&id, &["stopped"], "starting", |_| {})
                        .unwrap(),
                    Transition::Done(_)
                ) as usize
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .sum();
    assert_eq!(wins, 1);
}

#[test]
fn addresses_are_unique_and_freed_with_the_vm() {
    use std::net::Ipv4Addr;
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.db")).unwrap();
    let k = kernel("k");
    s.insert_kernel(&k).unwrap();
    let i = image("img", &k.id, 0);
    s.insert_image(&i).unwrap();
    let subnet = crate::net_alloc::Subnet::parse("10.1.0.0/30").unwrap();
    let a = vm("a", &i);
    let b = vm("b", &i);
    s.insert_vm(&a).unwrap();
    s.insert_vm(&b).unwrap();
    let ip = s.allocate_address(&a.id, |t| subnet.first_free(t)).unwrap();
    assert_eq!(ip, Some(Ipv4Addr::new(10, 1, 0, 2)));
    assert_eq!(s.address_by_vm_name("a").unwrap(), ip);
    assert_eq!(
        s.allocate_address(&b.id, |t| subnet.first_free(t)).unwrap(),
        None,
        "exhausted"
    );
    s.delete_vm(&a.id).unwrap();
    assert_eq!(
        s.allocate_address(&b.id, |t| subnet.first_free(t)).unwrap(),
        ip,
        "reused after delete"
    );
}

#[test]
fn published_ports_clash_by_address_and_protocol() {
    use std::net::Ipv4Addr;
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.db")).unwrap();
    let k = kernel("k");
    s.insert_kernel(&k).unwrap();
    let i = image("img", &k.id, 0);
    s.insert_image(&i).unwrap();
    let a = vm("a", &i);
    s.insert_vm(&a).unwrap();
    let port = |ip: Ipv4Addr, p: u16, proto: &str| PortRow {
        vm_id: a.id.clone(),
        host_ip: ip,
        host_port: p,
        guest_port: 80,
        proto: proto.into(),
    };
    s.add_port(&port(Ipv4Addr::UNSPECIFIED, 8080, "tcp"))
        .unwrap();
    assert!(matches!(
        s.add_port(&port(Ipv4Addr::LOCALHOST, 8080, "tcp")),
        Err(StoreError::AlreadyExists { .. })
    ));
    s.add_port(&port(Ipv4Addr::UNSPECIFIED, 8080, "udp"))
        .unwrap();
    s.add_port(&port(Ipv4Addr::LOCALHOST, 9090, "tcp")).unwrap();
    s.add_port(&port(Ipv4Addr::new(10, 0, 0, 1), 9090, "tcp"))
        .unwrap();
    assert!(s
        .add_port(&port(Ipv4Addr::UNSPECIFIED, 9090, "tcp"))
        .is_err());
    assert_eq!(s.ports_of(&a.id).unwrap().len(), 4);
    assert!(s.remove_port(&a.id, 8080, "udp").unwrap());
    assert!(!s.remove_port(&a.id, 8080, "udp").unwrap());
    s.delete_vm(&a.id).unwrap();
    assert!(
        s.ports_of(&a.id).unwrap().is_empty(),
        "ports go with the VM"
    );
}

#[test]
fn replace_swaps_in_one_transaction_and_refuses_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("state.db")).unwrap();
    let k1 = kernel("k");
    s.insert_kernel(&k1).unwrap();
    let i1 = image("img", &k1.id, 0);
    s.insert_image(&i1).unwrap();
    s.set_default_image(0, &i1.id).unwrap();
    s.set_default_image(1000, &i1.id).unwrap();

    // The kernel is used by an image: refused, nothing changed.
    let k2 = kernel("k");
    let e = s.replace_kernel(&k1.id, &k2).unwrap_err();
    assert!(matches!(e, StoreError::InUse { .. }), "{e}");
    assert_eq!(s.kernel_by_name("k").unwrap().unwrap().id, k1.id);

    // The image is replaced; defaults follow it to the new row.
    let i2 = image("img", &k1.id, 0);
    s.replace_image(&i1.id, &i2).unwrap();
    assert_eq!(s.image_by_name("img").unwrap().unwrap().id, i2.id);
    assert!(s.image_by_id(&i1.id).unwrap().is_none());
    assert_eq!(
        s.default_image_for(0).unwrap().as_deref(),
        Some(i2.id.as_str())
    );
    assert_eq!(
        s.default_image_for(1000).unwrap().as_deref(),
        Some(i2.id.as_str())
    );

    // An image used by a VM is not replaced.
    s.insert_vm(&vm("v", &i2)).unwrap();
    let i3 = image("img", &k1.id, 0);
    assert!(matches!(
        s.replace_image(&i2.id, &i3).unwrap_err(),
        StoreError::InUse { .. }
    ));
    assert_eq!(s.image_by_name("img").unwrap().unwrap().id, i2.id);

    // A free kernel is replaced; a failing insert (name taken by another
    // row) rolls the delete back.
    let k3 = kernel("free");
    s.insert_kernel(&k3).unwrap();
    let clash = kernel("k");
    assert!(matches!(
        s.replace_kernel(&k3.id, &clash).unwrap_err(),
        StoreError::AlreadyExists { .. }
    ));
    assert_eq!(s.kernel_by_name("free").unwrap().unwrap().id, k3.id);
    let k4 = kernel("free");
    s.replace_kernel(&k3.id, &k4).unwrap();
    assert_eq!(s.kernel_by_name("free").unwrap().unwrap().id, k4.id);
}

fn op_row(id: &str, owner: u32, state: &str, created_at: String) -> OperationRow {
    OperationRow {
        id: id.into(),
        kind: "image.register".into(),
        target: "x".into(),
        owner_uid: owner,
        state: state.into(),
        stage: "copy".into(),
        stages: "[]".into(),
        progress: None,
        result: None,
        error: None,
        created_at,
        finished_at: None,
        revision: 1,
    }
}

/// Another user's rows cannot crowd out the caller's: the owner filter is in
/// the query, before the limit.
#[test]
fn listings_filter_by_owner_before_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.db")).unwrap();
    s.put_operation(&op_row(
        "mine",
        1000,
        "done",
        timefmt::ago(std::time::Duration::from_secs(60)),
    ))
    .unwrap();
    for i in 0..20 {
        s.put_operation(&op_row(&format!("theirs{i}"), 2000, "done", timefmt::now()))
            .unwrap();
    }
    let mine = s.list_operations(None, 5, Some(1000)).unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].id, "mine");
    assert_eq!(s.list_operations(None, 5, None).unwrap().len(), 5);

    let k = kernel("k");
    s.insert_kernel(&k).unwrap();
    let mut theirs_k = kernel("theirs-k");
    theirs_k.owner_uid = 2000;
    s.insert_kernel(&theirs_k).unwrap();
    let root_img = image("root-img", &k.id, 0);
    s.insert_image(&root_img).unwrap();
    s.insert_image(&image("their-img", &k.id, 2000)).unwrap();
    s.insert_image(&image("my-img", &k.id, 1000)).unwrap();
    let names = |v: Vec<ImageRow>| v.into_iter().map(|i| i.name).collect::<Vec<_>>();
    assert_eq!(
        names(s.list_images_visible(Some(1000)).unwrap()),
        ["my-img", "root-img"]
    );
    assert_eq!(s.list_images_visible(None).unwrap().len(), 3);
    let knames: Vec<String> = s
        .list_kernels_visible(Some(1000))
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(knames, ["k"]);

    let mut theirs = vm("their-vm", &root_img);
    theirs.owner_uid = 2000;
    s.insert_vm(&theirs).unwrap();
    let mut mine = vm("my-vm", &root_img);
    mine.owner_uid = 1000;
    s.insert_vm(&mine).unwrap();
    let vms: Vec<String> = s
        .list_vms_of(Some(1000))
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(vms, ["my-vm"]);
    assert_eq!(s.list_vms_of(None).unwrap().len(), 2);
    // used_by: only the caller's VMs (and images it may see).
    assert_eq!(s.image_users(&root_img.id, Some(1000)).unwrap(), ["my-vm"]);
    assert_eq!(
        s.image_users(&root_img.id, None).unwrap(),
        ["my-vm", "their-vm"]
    );
    assert_eq!(
        s.kernel_users(&k.id, Some(1000)).unwrap(),
        ["image my-img", "image root-img", "vm my-vm"]
    );
}

#[test]
fn finished_operations_are_pruned_by_age_and_count_per_owner() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.db")).unwrap();
    let old = timefmt::ago(std::time::Duration::from_secs(30 * 24 * 3600));
    s.put_operation(&op_row("old-done", 1000, "done", old.clone()))
        .unwrap();
    s.put_operation(&op_row("old-running", 1000, "running", old.clone()))
        .unwrap();
    for i in 0..10 {
        let at = timefmt::ago(std::time::Duration::from_secs(100 - i));
        s.put_operation(&op_row(&format!("a{i}"), 1000, "failed", at))
            .unwrap();
    }
    s.put_operation(&op_row("b0", 2000, "done", timefmt::now()))
        .unwrap();
    let cutoff = timefmt::ago(std::time::Duration::from_secs(7 * 24 * 3600));
    assert_eq!(s.prune_operations(&cutoff, 3).unwrap(), 1 + 7);
    assert!(s.operation("old-done").unwrap().is_none());
    assert!(
        s.operation("old-running").unwrap().is_some(),
        "running stays"
    );
    for i in 0..7 {
        assert!(s.operation(&format!("a{i}")).unwrap().is_none());
    }
    for i in 7..10 {
        assert!(
            s.operation(&format!("a{i}")).unwrap().is_some(),
            "newest kept"
        );
    }
    assert!(s.operation("b0").unwrap().is_some(), "per owner");
}
