//! AWS Signature Version 4, for Lambda function URLs whose auth type is `AWS_IAM`: signed by
//! `aws-sigv4`, the AWS SDK's own signer (already in the tree under `aws-runtime`), with the
//! payload hash in `x-amz-content-sha256` as Lambda function URLs want it.
//!
//! Owns the bridge to it (which headers to sign, the credentials newtype, redacted in `Debug`)
//! and the tests that hold it to botocore's signatures and AWS's published suite. It leaves to
//! others when to sign (delivery signs each attempt, since the date is part of the signature),
//! which endpoints and region (config), and where the credentials come from (`aws_chain`,
//! cached by `aws_credentials`). It does no I/O and keeps no state: the same request,
//! credentials and instant always give the same headers.

use std::fmt;
use std::time::SystemTime;

use aws_sigv4::http_request::{
    sign as sign_request, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use reqwest::Url;

/// AWS credentials: an access key id, its secret and, for temporary credentials (an assumed
/// role, SSO), a session token. `Debug` shows the key id, never the secret or the token.
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl Credentials {
    pub fn new(
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    ) -> Credentials {
        Credentials {
            access_key_id,
            secret_access_key,
            session_token,
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = format_args!("<redacted>");
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted)
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| redacted),
            )
            .finish()
    }
}

/// The request to sign, as it will be sent.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// As sent, normally upper case.
    pub method: &'a str,
    /// Path and query are signed in the form the URL serialises them (percent-encoded).
    pub url: &'a Url,
    /// The headers to sign besides `host` and the `x-amz-*` ones [`sign`] adds, with the values
    /// they are sent with. Leave out headers a proxy or the HTTP client may change or drop
    /// (`user-agent`, `content-length`, hop-by-hop headers): a signed header that arrives
    /// different fails the signature.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// The headers a signature adds, in the order they are added.
const ADDED: [&str; 4] = [
    "x-amz-date",
    "x-amz-content-sha256",
    "x-amz-security-token",
    "authorization",
];

/// Signs `request` for `service` (`lambda` for function URLs) in `region` at `now`, and returns
/// the headers to add to it: `x-amz-date`, `x-amz-content-sha256` (the hex SHA-256 of the body),
/// `x-amz-security-token` when the credentials have a session token, then `authorization`.
///
/// The signature is valid for about 5 minutes around `now`, so sign each attempt anew. The
/// returned token header carries the session token itself: never log these values.
pub fn sign(
    request: &Request<'_>,
    region: &str,
    service: &str,
    creds: &Credentials,
    now: SystemTime,
) -> Vec<(&'static str, String)> {
    signed(
        request,
        region,
        service,
        creds,
        now,
        PayloadChecksumKind::XAmzSha256,
    )
}

fn signed(
    request: &Request<'_>,
    region: &str,
    service: &str,
    creds: &Credentials,
    now: SystemTime,
    payload_hash: PayloadChecksumKind,
) -> Vec<(&'static str, String)> {
    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
        creds.session_token.clone(),
        None,
        "shardhook",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = payload_hash;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(settings)
        .build()
        .expect("every signing parameter is set")
        .into();
    let signable = SignableRequest::new(
        request.method,
        request.url.as_str(),
        request.headers.iter().copied(),
        SignableBody::Bytes(request.body),
    )
    .expect("a Url is a valid URI");
    let (instructions, _signature) = sign_request(signable, &params)
        .expect("a request with a valid URI and headers signs")
        .into_parts();
    let (headers, _query) = instructions.into_parts();
    let mut added: Vec<(&'static str, String)> = headers
        .into_iter()
        .filter_map(|header| {
            let (name, value) = (header.name(), header.value());
            let name = ADDED
                .iter()
                .copied()
                .find(|a| a.eq_ignore_ascii_case(name))?;
            Some((name, value.to_owned()))
        })
        .collect();
    added.sort_by_key(|(name, _)| ADDED.iter().position(|a| a == name));
    added
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    use std::time::{Duration, UNIX_EPOCH};

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

    use super::*;

    /// The aws-sig-v4-test-suite's credentials, scope and instant (2015-08-30T12:36:00Z).
    const SUITE_KEY_ID: &str = "AKIDEXAMPLE";
    const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const SUITE_DATE: &str = "20150830T123600Z";
    const SUITE_UNIX: u64 = 1_440_938_160;
    const SUITE_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

    /// One case of AWS's published test suite
    /// (<https://docs.aws.amazon.com/general/latest/gr/signature-v4-test-suite.html>, the
    /// `aws-sig-v4-test-suite` archive): the request, and the last line of its `.sts` file and
    /// its `.authz` file, copied from the suite, never from this code's output.
    struct Vector {
        name: &'static str,
        method: &'static str,
        /// Path and query of the request line.
        target: &'static str,
        headers: &'static [(&'static str, &'static str)],
        body: &'static [u8],
        session_token: bool,
        /// The suite's string to sign, hashed: kept as the suite gives it, though `aws-sigv4`
        /// shows only the signature (which covers it).
        #[allow(dead_code)]
        sts_hash: &'static str,
        authz: &'static str,
    }

    const fn vector(
        name: &'static str,
        method: &'static str,
        target: &'static str,
        sts_hash: &'static str,
        authz: &'static str,
    ) -> Vector {
        Vector {
            name,
            method,
            target,
            headers: &[],
            body: b"",
            session_token: false,
            sts_hash,
            authz,
        }
    }

    const AUTHZ_PREFIX: &str =
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, ";

    // The suite signs without `x-amz-content-sha256`, so these go through `signature` with
    // `x-amz-date` (and the token for `post-sts-header-before`) only.
    // Left out: `get-space` and `get-utf8` write raw characters in the request line, which a
    // `Url` holds percent-encoded and a non-S3 signer then encodes again (as botocore does);
    // `post-x-www-form-urlencoded-parameters` and `get-header-value-multiline` disagree with
    // themselves across the suite's own files.
    const VECTORS: &[Vector] = &[
        vector(
            "get-vanilla",
            "GET",
            "/",
            "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63",
            "SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        vector(
            "post-vanilla",
            "POST",
            "/",
            "553f88c9e4d10fc9e109e2aeb65f030801b70c2f6468faca261d401ae622fc87",
            "SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        ),
        vector(
            "post-vanilla-query",
            "POST",
            "/?Param1=value1",
            "9d659678c1756bb3113e2ce898845a0a79dbbc57b740555917687f1b3340fbbd",
            "SignedHeaders=host;x-amz-date, Signature=28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
        ),
        vector(
            "get-vanilla-query-order-key-case",
            "GET",
            "/?Param2=value2&Param1=value1",
            "816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0",
            "SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
        vector(
            "get-vanilla-query-order-key",
            "GET",
            "/?Param1=value2&Param1=Value1",
            "704b4cef673542d84cdff252633f065e8daeba5f168b77116f8b1bcaf3d38f89",
            "SignedHeaders=host;x-amz-date, Signature=eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1",
        ),
        vector(
            "get-vanilla-query-order-value",
            "GET",
            "/?Param1=value2&Param1=value1",
            "c968629d70850097a2d8781c9bf7edcb988b04cac14cca9be4acc3595f884606",
            "SignedHeaders=host;x-amz-date, Signature=5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694",
        ),
        vector(
            "get-vanilla-query-unreserved",
            "GET",
            "/?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            "c30d4703d9f799439be92736156d47ccfb2d879ddf56f5befa6d1d6aab979177",
            "SignedHeaders=host;x-amz-date, Signature=9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197",
        ),
        vector(
            "get-vanilla-utf8-query",
            "GET",
            "/?\u{1234}=bar",
            "eb30c5bed55734080471a834cc727ae56beb50e5f39d1bff6d0d38cb192a7073",
            "SignedHeaders=host;x-amz-date, Signature=2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
        ),
        vector(
            "get-unreserved",
            "GET",
            "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            "6a968768eefaa713e2a6b16b589a8ea192661f098f37349f4e2c0082757446f9",
            "SignedHeaders=host;x-amz-date, Signature=07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f",
        ),
        vector(
            "get-slashes",
            "GET",
            "//example//",
            "cb96b4ac96d501f7c5c15bc6d67b3035061cfced4af6585ad927f7e6c985c015",
            "SignedHeaders=host;x-amz-date, Signature=9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84",
        ),
        vector(
            "get-slash-pointless-dot",
            "GET",
            "/./example",
            "214d50c111a8edc4819da6a636336472c916b5240f51e9a51b5c3305180cf702",
            "SignedHeaders=host;x-amz-date, Signature=ef75d96142cf21edca26f06005da7988e4f8dc83a165a80865db7089db637ec5",
        ),
        vector(
            "get-relative",
            "GET",
            "/example/..",
            "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63",
            "SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        Vector {
            headers: &[
                ("My-Header1", "value2"),
                ("My-Header1", "value2"),
                ("My-Header1", "value1"),
            ],
            ..vector(
                "get-header-key-duplicate",
                "GET",
                "/",
                "dc7f04a3abfde8d472b0ab1a418b741b7c67174dad1551b4117b15527fbe966c",
                "SignedHeaders=host;my-header1;x-amz-date, Signature=c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
            )
        },
        Vector {
            headers: &[
                ("My-Header1", "value4"),
                ("My-Header1", "value1"),
                ("My-Header1", "value3"),
                ("My-Header1", "value2"),
            ],
            ..vector(
                "get-header-value-order",
                "GET",
                "/",
                "31ce73cd3f3d9f66977ad3dd957dc47af14df92fcd8509f59b349e9137c58b86",
                "SignedHeaders=host;my-header1;x-amz-date, Signature=08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01",
            )
        },
        Vector {
            headers: &[("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")],
            ..vector(
                "get-header-value-trim",
                "GET",
                "/",
                "a726db9b0df21c14f559d0a978e563112acb1b9e05476f0a6a1c7d68f28605c7",
                "SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
            )
        },
        Vector {
            headers: &[("My-Header1", "VALUE1")],
            ..vector(
                "post-header-value-case",
                "POST",
                "/",
                "d51ced243e649e3de6ef63afbbdcbca03131a21a7103a1583706a64618606a93",
                "SignedHeaders=host;my-header1;x-amz-date, Signature=cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d",
            )
        },
        // The suite's `.creq` for this case also lists content-length, but its `.sts` and
        // `.authz` sign content-type, host and x-amz-date only; those two are compared.
        Vector {
            headers: &[("Content-Type", "application/x-www-form-urlencoded")],
            body: b"Param1=value1",
            ..vector(
                "post-x-www-form-urlencoded",
                "POST",
                "/",
                "42a5e5bb34198acb3e84da4f085bb7927f2bc277ca766e6d19c73c2154021281",
                "SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
            )
        },
        Vector {
            session_token: true,
            ..vector(
                "post-sts-header-before",
                "POST",
                "/",
                "c237e1b440d4c63c32ca95b5b99481081cb7b13c7e40434868e71567c1a882f6",
                "SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead",
            )
        },
    ];

    fn suite_creds(session_token: bool) -> Credentials {
        Credentials::new(
            SUITE_KEY_ID.to_owned(),
            SUITE_SECRET.to_owned(),
            session_token.then(|| SUITE_TOKEN.to_owned()),
        )
    }

    /// A vector's `authorization` value (the suite signs without `x-amz-content-sha256`).
    fn sign_vector(v: &Vector) -> String {
        let url = Url::parse(&format!("https://example.amazonaws.com{}", v.target)).unwrap();
        let request = Request {
            method: v.method,
            url: &url,
            headers: v.headers,
            body: v.body,
        };
        let now = UNIX_EPOCH + Duration::from_secs(SUITE_UNIX);
        let creds = suite_creds(v.session_token);
        let headers = signed(
            &request,
            "us-east-1",
            "service",
            &creds,
            now,
            PayloadChecksumKind::NoHeader,
        );
        assert_eq!(headers[0], ("x-amz-date", SUITE_DATE.to_owned()));
        headers.last().unwrap().1.clone()
    }

    #[test]
    fn matches_the_published_test_suite() {
        for v in VECTORS {
            assert_eq!(
                sign_vector(v),
                format!("{AUTHZ_PREFIX}{}", v.authz),
                "{}",
                v.name
            );
        }
    }

    #[test]
    fn sign_adds_date_payload_hash_token_and_authorization() {
        let url = Url::parse("https://example.amazonaws.com/").unwrap();
        let request = Request {
            method: "POST",
            url: &url,
            headers: &[],
            body: b"",
        };
        let now = UNIX_EPOCH + Duration::from_secs(SUITE_UNIX);
        let names = |creds| -> Vec<&str> {
            sign(&request, "us-east-1", "lambda", &creds, now)
                .iter()
                .map(|(name, _)| *name)
                .collect()
        };
        assert_eq!(
            names(suite_creds(false)),
            ["x-amz-date", "x-amz-content-sha256", "authorization"]
        );
        assert_eq!(
            names(suite_creds(true)),
            [
                "x-amz-date",
                "x-amz-content-sha256",
                "x-amz-security-token",
                "authorization"
            ]
        );
        let headers = sign(&request, "us-east-1", "lambda", &suite_creds(true), now);
        assert_eq!(headers[0].1, SUITE_DATE);
        assert_eq!(
            headers[1].1,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(headers[2].1, SUITE_TOKEN);
        assert!(headers[3].1.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/lambda/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature="
        ));
    }

    #[test]
    fn credentials_never_print_the_secret_or_the_token() {
        for creds in [suite_creds(true), suite_creds(false)] {
            let printed = format!("{creds:?} {creds:#?}");
            assert!(!printed.contains(SUITE_SECRET), "{printed}");
            assert!(!printed.contains(&SUITE_SECRET[..8]), "{printed}");
            assert!(!printed.contains(&SUITE_TOKEN[..16]), "{printed}");
            assert!(printed.contains(SUITE_KEY_ID), "{printed}");
        }
        assert_eq!(
            format!("{:?}", suite_creds(true)),
            "Credentials { access_key_id: \"AKIDEXAMPLE\", secret_access_key: <redacted>, \
             session_token: Some(<redacted>) }"
        );
    }

    /// Signs with botocore's `SigV4Auth` through `tests/sigv4/botocore_sign.py` and returns the
    /// headers it added and its canonical request.
    fn botocore_sign(
        request: &Request<'_>,
        region: &str,
        service: &str,
        creds: &Credentials,
        amz_date: &str,
    ) -> (Vec<(String, String)>, String) {
        const INSTALL: &str = "the botocore cross-check needs $PYTHON (or python3) with botocore: \
                               scripts/test sets up .venv with tests/requirements.txt";
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/sigv4/botocore_sign.py"
        );
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let input = serde_json::json!({
            "method": request.method,
            "url": request.url.as_str(),
            "headers": request.headers,
            "body_base64": STANDARD.encode(request.body),
            "region": region,
            "service": service,
            "access_key_id": creds.access_key_id,
            "secret_access_key": creds.secret_access_key,
            "session_token": creds.session_token,
            "amz_date": amz_date,
        });
        let mut child = Command::new(&python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} ({e}); {INSTALL}"));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.to_string().as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{python} {script} failed ({}): {}\n{INSTALL}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let headers = out["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| {
                (
                    pair[0].as_str().unwrap().to_owned(),
                    pair[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        (
            headers,
            out["canonical_request"].as_str().unwrap().to_owned(),
        )
    }

    fn assert_same_as_botocore(request: &Request<'_>, region: &str, creds: &Credentials) {
        let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600 + 12 * 3600 + 34 * 60 + 56);
        let ours = sign(request, region, "lambda", creds, now);
        let (theirs, theirs_creq) = botocore_sign(request, region, "lambda", creds, &ours[0].1);
        assert_eq!(ours[0].1, "20260101T123456Z");
        let ours: Vec<(String, String)> = ours
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        assert_eq!(ours, theirs, "botocore's canonical request:\n{theirs_creq}");
    }

    #[test]
    fn a_shardhook_delivery_signs_exactly_as_botocore_does() {
        let url = Url::parse("https://abc123.lambda-url.us-east-1.on.aws/").unwrap();
        let body = br#"{"v":1,"shard_id":3,"shard_count":16,"session_id":"9c1f0e2b","events":[{"t":"MESSAGE_CREATE","s":42,"d":{"content":"hi  there","id":"1"}}]}"#;
        let request = Request {
            method: "POST",
            url: &url,
            headers: &[
                ("content-type", "application/json"),
                ("webhook-id", "msg_2b9f3c4d5e6f7a8b9c0d1e2f"),
                ("webhook-timestamp", "1767271096"),
                (
                    "webhook-signature",
                    "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v1,bm90IGEgcmVhbCBzaWduYXR1cmUgYXQgYWxsIQ==",
                ),
            ],
            body,
        };
        let creds = Credentials::new(
            "ASIAIOSFODNN7EXAMPLE".to_owned(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned(),
            Some("IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQExample==".to_owned()),
        );
        assert_same_as_botocore(&request, "us-east-1", &creds);
    }

    #[test]
    fn ports_paths_queries_and_repeated_headers_sign_as_botocore_does() {
        let url =
            Url::parse("http://127.0.0.1:9000/hooks/a%20b/%C3%BC//x/?b=2&a=x%20y&a=1&c=").unwrap();
        let request = Request {
            method: "POST",
            url: &url,
            headers: &[
                ("Content-Type", "application/json"),
                ("X-Custom", "  one   two "),
                ("x-custom", "three"),
            ],
            body: b"\x00\xffbinary",
        };
        let creds = suite_creds(false);
        assert_same_as_botocore(&request, "eu-central-1", &creds);
    }
}
