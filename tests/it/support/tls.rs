//! A throwaway certificate authority for the TLS tests, made with Debian's
//! `openssl` command: a CA, a server certificate for 127.0.0.1 and
//! localhost, and a client certificate (for mutual TLS), each valid for a
//! day, in a directory that disappears with the value.

use std::path::PathBuf;
use std::process::Command;

pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Makes the CA and both certificates (elliptic-curve keys: fast).
    pub fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=wxtokend test CA",
        ]);
        pki.sign(
            "server",
            "/CN=localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        pki.sign(
            "client",
            "/CN=wxtokend-client",
            "extendedKeyUsage=clientAuth\n",
        );
        // The driver's tlsCertificateKeyFile: certificate and key in one file.
        let mut both = std::fs::read(pki.path("client.pem")).expect("client.pem");
        both.extend(std::fs::read(pki.path("client.key")).expect("client.key"));
        std::fs::write(pki.path("client-with-key.pem"), both).expect("write client-with-key.pem");
        pki
    }

    /// A key and a certificate signed by the CA, with `extensions`.
    fn sign(&self, name: &str, subject: &str, extensions: &str) {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(
            self.path(&ext),
            format!("basicConstraints=CA:FALSE\n{extensions}"),
        )
        .expect("write extensions");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            subject,
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &ext,
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("the TLS tests need the openssl command: apt-get install openssl");
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// The client's certificate and key in one PEM file.
    pub fn client(&self) -> PathBuf {
        self.path("client-with-key.pem")
    }

    /// The server options for TLS with this CA's server certificate; with
    /// `mutual`, clients must present a certificate signed by the CA.
    pub fn server_args(&self, mutual: bool) -> Vec<String> {
        let file = |name: &str| self.path(name).display().to_string();
        let mut args = vec![
            "--tls-cert-file".to_owned(),
            file("server.pem"),
            "--tls-key-file".to_owned(),
            file("server.key"),
        ];
        if mutual {
            args.extend([
                "--tls-ca-file".to_owned(),
                file("ca.pem"),
                "--tls-require-client-cert".to_owned(),
            ]);
        }
        args
    }
}
