use gantry_model::declarative::DeclarativeError;

/// What can go wrong in the store. Constraint violations carry what the Admin API needs to
/// answer in Kong's shape.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Open(String),
    #[error("not found")]
    NotFound,
    #[error("primary key violation on key '{{id=\"{id}\"}}'")]
    PrimaryKey { id: String },
    #[error("UNIQUE violation detected on '{{{field}=\"{value}\"}}'")]
    Unique {
        entity: String,
        field: String,
        value: String,
    },
    #[error("the foreign key '{{id=\"{id}\"}}' does not reference an existing '{target}' entity.")]
    ForeignKey {
        field: String,
        target: String,
        id: String,
    },
    #[error("an existing '{by}' entity references this '{entity}' entity")]
    ReferencedBy { entity: String, by: String },
    #[error("{0}")]
    Declarative(#[from] DeclarativeError),
    #[error("stored document {entity}/{id} is not valid JSON: {reason}")]
    Corrupt {
        entity: String,
        id: String,
        reason: String,
    },
    #[error("invalid offset")]
    InvalidOffset,
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("control plane {0} does not exist (it was deleted)")]
    NoControlPlane(i64),
    #[error("the default control plane cannot be deleted")]
    DefaultControlPlane,
    #[error("migration failed: {0}")]
    Migration(String),
}
