internal import CHiredis

/// The version of the hiredis library the package was built against (0.14 on Debian bookworm, 1.x elsewhere).
enum HiredisVersion {
    static var major: Int { Int(chiredis_version_major()) }
}
