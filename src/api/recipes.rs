//! `/api/v1/recipes`: the recipes of the configured recipes directory, and validation of an
//! uploaded recipe against the bench's stations.
//!
//! Recipe names are file stems checked by [`crate::runs::safe_name`] before they are joined to
//! the recipes directory, so no request reaches another file.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{AppState, Problem};
use crate::diag::{Diagnostics, Source};
use crate::recipe::{self, Recipe, StationView};
use crate::runs::{self, StartError};

#[derive(Debug, Serialize, ToSchema)]
pub struct RecipeSummary {
    /// File stem: what `POST /runs` takes as `recipe`.
    pub name: String,
    /// `[recipe] name`, as filed with runs and used as the metrics label.
    pub title: Option<String>,
    pub version: Option<String>,
    pub description: Option<String>,
    pub roles: Vec<String>,
    /// Set when the file does not parse (see `GET /recipes/{name}` for the problems).
    pub error: Option<String>,
}

fn summary(name: &str, parsed: &Result<Recipe, Diagnostics>) -> RecipeSummary {
    match parsed {
        Ok(r) => RecipeSummary {
            name: name.to_string(),
            title: Some(r.meta.name.clone()),
            version: Some(r.meta.version.clone()),
            description: Some(r.meta.description.clone()),
            roles: r.meta.roles.clone(),
            error: None,
        },
        Err(d) => RecipeSummary {
            name: name.to_string(),
            title: None,
            version: None,
            description: None,
            roles: Vec::new(),
            error: Some(format!("{} problem(s)", d.errors().count())),
        },
    }
}

/// The recipes of the configured recipes directory.
#[utoipa::path(get, path = "/api/v1/recipes", responses((status = 200, body = Vec<RecipeSummary>)))]
pub async fn list_recipes(
    State(state): State<AppState>,
) -> Result<Json<Vec<RecipeSummary>>, Problem> {
    let dir = state.live().bench.paths.recipes.clone();
    let list = tokio::task::spawn_blocking(move || {
        runs::recipe_files(&dir)
            .into_iter()
            .map(|(name, path)| summary(&name, &recipe::load_file(&path)))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(Json(list))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ParameterOut {
    pub unit: String,
    pub default: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub description: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepOut {
    pub name: String,
    pub kind: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecipeDetail {
    #[serde(flatten)]
    pub summary: RecipeSummary,
    /// The file as stored.
    pub source: String,
    pub parameters: BTreeMap<String, ParameterOut>,
    pub steps: Vec<StepOut>,
    pub cleanup: Vec<StepOut>,
    /// Shape problems of the file, with line:col.
    pub problems: Vec<super::problem::ProblemItem>,
}

fn steps_out(steps: &[recipe::load::Step]) -> Vec<StepOut> {
    steps
        .iter()
        .map(|s| StepOut {
            name: s.name.clone(),
            kind: s.kind.as_str().to_string(),
        })
        .collect()
}

fn start_problem(e: &StartError) -> Problem {
    match e {
        StartError::BadName(_) => Problem::new(StatusCode::BAD_REQUEST, "bad-name", e.to_string()),
        StartError::UnknownRecipe { .. } => {
            Problem::new(StatusCode::NOT_FOUND, "unknown-recipe", e.to_string())
        }
        _ => Problem::unprocessable(e.to_string()),
    }
}

/// One recipe: its source and a parsed summary (parameters, steps, cleanup).
#[utoipa::path(get, path = "/api/v1/recipes/{name}",
    params(("name" = String, Path, description = "recipe file stem")),
    responses((status = 200, body = RecipeDetail), (status = 400, body = Problem, description = "not a plain name"),
        (status = 404, body = Problem)))]
pub async fn get_recipe(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<RecipeDetail>, Problem> {
    let dir = state.live().bench.paths.recipes.clone();
    let path = runs::recipe_path(&dir, &name).map_err(|e| start_problem(&e))?;
    let read = tokio::task::spawn_blocking(move || Source::read(&path))
        .await
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let source = read.map_err(|d| Problem::not_found(d.to_string()))?;
    let (parsed, diags) = recipe::load::parse_partial(&source);
    let result = match (&parsed, diags.has_errors()) {
        (Some(r), false) => Ok(r.clone()),
        _ => Err(diags.clone()),
    };
    let mut detail = RecipeDetail {
        summary: summary(&name, &result),
        source: source.text.clone(),
        parameters: BTreeMap::new(),
        steps: Vec::new(),
        cleanup: Vec::new(),
        problems: diags
            .sorted()
            .into_iter()
            .map(super::problem::ProblemItem::from_diag)
            .collect(),
    };
    if let Some(r) = parsed {
        detail.parameters = r
            .parameters
            .iter()
            .map(|(k, p)| {
                (
                    k.clone(),
                    ParameterOut {
                        unit: p.unit.clone(),
                        default: p.default,
                        min: p.min,
                        max: p.max,
                        description: p.description.clone(),
                    },
                )
            })
            .collect();
        detail.steps = steps_out(&r.steps);
        detail.cleanup = steps_out(&r.cleanup);
    }
    Ok(Json(detail))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ValidateQuery {
    /// Validate against this station only (default: every station that has the recipe's roles).
    pub station: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ValidateOk {
    pub ok: bool,
    pub name: String,
    pub version: String,
    /// Stations it was validated against.
    pub stations: Vec<String>,
    pub warnings: Vec<super::problem::ProblemItem>,
}

/// What the upload is called in diagnostics.
const UPLOAD: &str = "upload.toml";

/// Validate a recipe (the TOML text as the body) as a run would: every problem with line:col.
#[utoipa::path(post, path = "/api/v1/recipes/validate",
    params(ValidateQuery),
    request_body(content = String, content_type = "application/toml"),
    security((), ("bearer" = [])),
    responses((status = 200, body = ValidateOk),
        (status = 400, body = Problem, description = "not UTF-8"),
        (status = 413, body = Problem),
        (status = 422, body = Problem, description = "the recipe does not validate; `problems` lists every one")))]
pub async fn validate_recipe(
    State(state): State<AppState>,
    Query(q): Query<ValidateQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ValidateOk>, Problem> {
    let body = body?;
    let text = String::from_utf8(body.to_vec()).map_err(|_| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-body",
            "the recipe must be UTF-8 text",
        )
    })?;
    let live = state.live();
    let source = Source::new(UPLOAD, text);
    let (parsed, mut diags) = recipe::load::parse_partial(&source);
    let mut stations = Vec::new();
    if let Some(r) = &parsed {
        let names: Vec<String> = match &q.station {
            Some(s) => vec![s.clone()],
            None => live.bench.stations.keys().cloned().collect(),
        };
        for name in names {
            let view = StationView::of(&live.bench, &name).map_err(Problem::not_found)?;
            if q.station.is_none() && !r.meta.roles.iter().all(|x| view.roles.contains_key(x)) {
                continue;
            }
            if let Err(d) = recipe::validate(r, &view, &BTreeMap::new()) {
                for x in d.0 {
                    if !diags.0.contains(&x) {
                        diags.push(x);
                    }
                }
            }
            stations.push(name);
        }
        if stations.is_empty() {
            diags.push(r.meta_locs.diag(
                "roles",
                format!(
                    "no station has every role this recipe needs ({})",
                    r.meta.roles.join(", ")
                ),
            ));
        }
    }
    if diags.has_errors() {
        let n = diags.errors().count();
        return Err(Problem::with_diagnostics(
            "invalid-recipe",
            format!("the recipe has {n} problem(s)"),
            &diags,
        ));
    }
    let r = parsed.expect("no errors means parsed");
    Ok(Json(ValidateOk {
        ok: true,
        name: r.meta.name.clone(),
        version: r.meta.version.clone(),
        stations,
        warnings: diags
            .warnings()
            .map(super::problem::ProblemItem::from_diag)
            .collect(),
    }))
}
