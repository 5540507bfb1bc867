"""What tests share: where the data and peers are (``env``), SEG/SR cases (``results_cases``),
TLS certificates (``tls_certs``), the hostile-input corpus (``bad_inputs``)."""
