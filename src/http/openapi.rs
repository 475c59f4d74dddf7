//! `GET /openapi.json`: the OpenAPI document of the HTTP listener, generated from the
//! handlers' annotations so it cannot drift from the code, for clients and fuzzers.

use axum::Json;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use super::{error::ErrorBody, rest};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "KMS HTTP API",
        description = "The original HTTP key service's API, served beside gRPC by the same services. Tokens from /login and from gRPC kms.v1.Auth/Login are interchangeable.",
    ),
    paths(
        super::health,
        super::metrics,
        super::jwks,
        rest::register,
        rest::login,
        rest::create_key,
        rest::get_key,
        rest::delete_key,
        rest::rotate_key,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerScheme),
)]
pub struct ApiDoc;

/// The `bearer` security scheme the operations refer to.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

pub(super) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
